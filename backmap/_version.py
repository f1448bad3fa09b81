"""The package version, in a leaf module so that core modules can read it without importing the
package's public API (which would close an import circle)."""
__version__ = "0.1.0"
