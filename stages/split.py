"""Stage split: listed raw images -> data/split/{train,test}/<flat name>.jpg + validated pairs CSVs."""

from casd.stages import main

if __name__ == "__main__":
    main("split")
