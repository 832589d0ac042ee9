"""Stage segment: LIP-20 parsing maps -> data/parsing/{train,test}, 8 merged regions at data.image_size."""

from casd.stages import main

if __name__ == "__main__":
    main("segment")
