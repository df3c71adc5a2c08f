"""Models: a feature extractor followed by one linear `head` whose rows are the output classes."""
