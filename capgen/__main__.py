"""`python -m capgen -i example.jpg` works like the tutorial's `python main.py -i example.jpg`."""

from capgen.cli import main

if __name__ == "__main__":
    main()
