"""The Textual dashboard; imports nothing from torch."""
