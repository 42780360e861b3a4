"""Sphinx configuration for the txschannel documentation."""

project = "txschannel"
author = "the txschannel developers"
copyright = "2026, the txschannel developers"
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
