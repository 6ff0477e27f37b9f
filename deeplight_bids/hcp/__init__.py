"""Human Connectome Project data tools: ``deeplight-bids-hcp`` and the TFRecord export.

* :mod:`deeplight_bids.hcp.s3` - credentials, the S3 client and its errors;
  :mod:`~deeplight_bids.hcp.listing` - what HCP holds upstream;
  :mod:`~deeplight_bids.hcp.download` - resumable parallel downloads;
  progress through :class:`deeplight_bids.progress.ByteProgress`;
* :mod:`deeplight_bids.hcp.bids` - BIDS naming, events from HCP EV files, sidecars;
* :mod:`deeplight_bids.hcp.cli` - the ``fetch`` and ``list`` commands;
* :mod:`deeplight_bids.hcp.tfrecord` - export/import in the original DeepLight schema.

Submodules are imported on use so that ``import deeplight_bids.hcp`` pulls in
neither boto3 nor TensorFlow.
"""
