"""``python -m pipeline.synthetic --output <uri> ...``: see :func:`pipeline.synthetic.archive.main`."""

from pipeline.synthetic.archive import main

if __name__ == "__main__":  # spawned worker processes import this module too
    main()
