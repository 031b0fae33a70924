"""One runnable module per lesson: `python -m experiments.<name> --help`."""
