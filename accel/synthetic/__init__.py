"""Procedural clips with ground truth (shapes, colours, directions) and the opencv scorer of videos against prompts."""
