"""Stage resize: data/split -> data/resized at data.image_size (optional border crop; data.resize_filter)."""

from casd.stages import main

if __name__ == "__main__":
    main("resize")
