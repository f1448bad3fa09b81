"""The works that user-facing texts cite by short name ("thesis ch. 7"), written out in full once
so that every page and report that uses the short name can give the reference with it."""

#: "thesis" in help texts, plugin summaries and reports
THESIS = ("M. Stieffenhofer, Multiscale Modeling and Deep Learning: Reverse-mapping of Condensed-phase Molecular "
          "Structures, PhD thesis, Johannes Gutenberg-Universität Mainz (2022)")

#: the line that follows a text citing the thesis by chapter, equation or table
THESIS_NOTE = f"'thesis' is {THESIS}."
