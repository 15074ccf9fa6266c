"""Weight buckets: what broadcast receivers allocate (read from safetensors headers) matches what is sent."""

import pytest
import torch
from safetensors.torch import save_file

from east_ds.cluster.weight_sync import bucket_meta, checkpoint_metas, checkpoint_tensors, iter_buckets


@pytest.mark.parametrize("bucket_bytes", [1, 64, 200, 10**6])
def test_header_metas_match_the_buckets_sent(tmp_path, bucket_bytes):
    """Two files, mixed dtypes, keys saved out of order: the metadata from the headers alone equals that of the
    buckets built from the loaded tensors, bucket for bucket and in order (the receivers' reload follows it)."""
    save_file({f"b{i}": torch.randn(i + 1, 7) for i in range(9)} | {"a": torch.zeros(3, 5, dtype=torch.bfloat16)},
              str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"z": torch.zeros(40), "c": torch.ones(2, dtype=torch.float16)},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    sent = [bucket_meta(b) for b in iter_buckets(checkpoint_tensors(tmp_path), bucket_bytes)]
    assert checkpoint_metas(tmp_path, bucket_bytes) == sent
    assert sum(len(b) for b in sent) == 12
    if bucket_bytes == 1:
        assert all(len(b) == 1 for b in sent)  # a tensor larger than the limit travels alone


def test_no_weights_is_an_error_naming_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        checkpoint_metas(tmp_path, 1)
