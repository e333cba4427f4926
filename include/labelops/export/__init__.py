"""The export stage's pure logic: one final label per item, the dataset files and the dataset card."""
