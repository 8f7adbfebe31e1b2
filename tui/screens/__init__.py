"""Screens layered over the dashboard."""
