"""The embedded demo datasets (no download), apart from the kit's core: `rfcx` (the RFCx
layout, data/demo) and `birdclef` (the BirdCLEF 2021 layout, data/birdclef_demo), both
built from the call synthesis in `calls`, `noise`, `plan` and `scene`."""
