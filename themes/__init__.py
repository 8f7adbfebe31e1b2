"""Theme files (data) loaded into Textual themes."""
