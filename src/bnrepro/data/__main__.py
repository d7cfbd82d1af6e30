"""`python -m bnrepro.data A B ...` prints the first dataset that loads (bnrepro.data.datasets)."""

from bnrepro.data.datasets import main

if __name__ == "__main__":
    main()
