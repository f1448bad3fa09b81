"""An example backmap model pack. Put model folders (``backmap export-model RUN --out
backmap_example_models/NAME``) or archives (``--out backmap_example_models/NAME.bmz``) here; the
entry point in pyproject.toml registers them."""
