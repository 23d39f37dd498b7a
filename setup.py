from setuptools import setup

# Metadata lives in setup.cfg; this shim lets Beam runners stage the package with
# --setup_file ./setup.py (Dataflow, Flink and Spark workers pip-install it).
setup()
