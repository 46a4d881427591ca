"""Adapters that plug xpaste into training frameworks (import each submodule explicitly)."""
