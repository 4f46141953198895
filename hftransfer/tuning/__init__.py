"""Fine-tuning recipes: which layer groups train when and at what learning rate (``strategies``), and L2-SP
(``regularizers``)."""
