"""Sphinx configuration for the txschannel documentation."""

project = "txschannel"
author = "the txschannel developers"
copyright = "2026, the txschannel developers"
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# Furo: maintained, readable on a phone, with light and dark modes. The
# pictures in images/ carry their own light card, so they read in both.
html_theme = "furo"
html_title = "txschannel"
html_static_path = ["_static"]
html_css_files = ["diagrams.css"]
exclude_patterns = ["_build"]
nitpicky = False
