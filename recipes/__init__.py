"""Recipes shipped with vidsift as package data (``curate/*.toml``, ``train/*.toml``).

``vidsift curate quickstart ...`` and ``vidsift train tiny ...`` find them by name
(``vidsift.pipeline.config.resolve_recipe``); a path to any TOML file works as well.
"""
