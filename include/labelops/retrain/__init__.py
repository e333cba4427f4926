"""The retrain stage: trigger decision, training, champion/challenger (pure logic; operators in plugins/)."""
