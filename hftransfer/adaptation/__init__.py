"""Domain adaptation: the adaptation losses and label-free selection scores (``methods``), paired source /
target batches (``paired``) and the domain gap of frozen features (``domain_gap``)."""
