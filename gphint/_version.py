"""The one place the version lives; setup.py compiles it into gphint._mech too."""
__version__ = "0.1.0"
