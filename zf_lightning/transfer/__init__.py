"""Transfer experiments of the paper (Tables 4-6): Caltech-101, Caltech-256 and PASCAL VOC 2012."""
