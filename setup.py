"""For ``pip install -e .`` with older pip and users who expect a setup.py; metadata is in pyproject.toml."""

from setuptools import setup

setup()
