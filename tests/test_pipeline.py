"""The input pipeline: seeded, resumable batches; on-device normalisation and D4, in torch ops and
in the optional compiled CPU pass (bit for bit the same); predict_proba."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from train_fixtures import write_store

from pcamflow.data import transforms
from pcamflow.data.loader import BatchLoader, resident_copy
from pcamflow.data.predictions import predict_proba
from pcamflow.data.store import Split, load_split, load_stats
from pcamflow.data.transforms import D4_SIZE, BatchTransform, apply_d4, d4_affine
from pcamflow.errors import PcamflowError
from pcamflow.training.device import RESIDENT_SHARE, device_resident, resident_fits


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 50, "valid": 20})


@pytest.fixture(scope="module")
def split(store):
    return load_split(store, "train", mmap=True)


@pytest.fixture(scope="module")
def accelerated():
    """The compiled CPU pass, ready: a test comparing it with the torch ops must not compare the
    torch ops with themselves after a silent fallback."""
    accelerator = transforms.cpu_accelerator()
    assert accelerator is not None, "the compiled CPU pass fell back to the torch ops (see the warning)"
    return accelerator


def batches(loader):
    """Every batch of the rest of the epoch as uint8 tensors."""
    return [(x.clone(), y.clone()) for x, y in loader]


def test_an_epoch_yields_every_tile_once_as_uint8_batches(split):
    loader = BatchLoader(split, 8, seed=0)
    got = batches(loader)
    assert len(loader) == len(got) == 7
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert x.dtype == torch.uint8 and x.shape == (50, 96, 96, 3) and y.dtype == torch.int64
    # every tile exactly once, with its own label
    order = [int(np.flatnonzero((split.x == xi.numpy()).all(axis=(1, 2, 3)))[0]) for xi in x]
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(y.numpy(), split.y[order])
    assert len(BatchLoader(split, 8, seed=0, drop_last=True)) == 6


def test_order_is_a_function_of_the_seed_and_changes_per_epoch(split):
    a, b, c = (BatchLoader(split, 10, seed=s) for s in (1, 1, 2))
    first_a, first_b, first_c = batches(a), batches(b), batches(c)
    assert all(torch.equal(p[1], q[1]) and torch.equal(p[0], q[0]) for p, q in zip(first_a, first_b))
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(first_a, first_c))
    second_a = batches(a)
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(first_a, second_a))


def test_a_restored_loader_yields_exactly_the_remaining_batches(split):
    reference = BatchLoader(split, 8, seed=3, balanced=True)
    epoch1, epoch2 = batches(reference), batches(reference)

    loader = BatchLoader(split, 8, seed=3, balanced=True)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    resumed = BatchLoader(split, 8, seed=999, balanced=True)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == len(epoch1) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, epoch1[3:]))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(batches(resumed), epoch2))


# ---- where batches are gathered: host, host with prefetch, device-resident ----

INPUT_PATHS = {
    "host": {},
    "prefetched": {"prefetch": True},  # the background gather CUDA uses when the split does not fit
    "resident": {"resident": True},  # on the cpu device: the same code as on CUDA, in host memory
}


@pytest.mark.parametrize("path", ["prefetched", "resident"])
@pytest.mark.parametrize(
    "options", [{}, {"balanced": True}, {"drop_last": True}], ids=["shuffle", "balanced", "drop_last"]
)
def test_every_input_path_yields_the_host_batches_bit_for_bit(split, path, options):
    host = BatchLoader(split, 8, seed=4, **options)
    other = BatchLoader(split, 8, seed=4, **options, **INPUT_PATHS[path])
    for _ in range(2):  # two epochs: each draws a new order
        expected, got = batches(host), batches(other)
        assert len(got) == len(expected) == len(host)
        for (xa, ya), (xb, yb) in zip(expected, got):
            assert xb.dtype == torch.uint8 and yb.dtype == torch.int64 and xb.is_contiguous()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert other.state_dict()["epoch"] == 2


@pytest.mark.parametrize(
    ("first", "then"),
    [("resident", "host"), ("host", "prefetched"), ("prefetched", "resident")],
)
def test_a_loader_resumes_mid_epoch_on_another_input_path(split, first, then):
    reference = batches(BatchLoader(split, 8, seed=3))
    loader = BatchLoader(split, 8, seed=3, **INPUT_PATHS[first])
    it = iter(loader)
    for _ in range(3):
        next(it)  # a prefetching loader has gathered batch 4 already: the state must not count it
    state = loader.state_dict()
    assert state["position"] == 3
    resumed = BatchLoader(split, 8, seed=999, **INPUT_PATHS[then])
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == len(reference) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(rest, reference[3:]))


def test_a_resident_split_is_copied_once_and_the_host_array_released(store):
    mapped = load_split(store, "train", mmap=True)
    loader = BatchLoader(mapped, 8, seed=0, resident=True)
    assert loader.x is None  # the loader no longer holds the memory-mapped file
    copy = resident_copy(mapped.x, torch.device("cpu"))
    assert copy.dtype == torch.uint8 and np.array_equal(copy.numpy(), mapped.x)
    in_memory = np.array(mapped.x)
    assert resident_copy(in_memory, torch.device("cpu")).data_ptr() == in_memory.ctypes.data  # shared


def test_the_fit_rule_leaves_half_the_free_device_memory_to_the_model():
    assert RESIDENT_SHARE == 0.5
    full_pcam = 262_144 * 96 * 96 * 3  # 7.25 GB
    assert resident_fits(full_pcam, free_bytes=39 * 2**30)  # a 40 GB A100
    assert not resident_fits(full_pcam, free_bytes=5 * 2**30)  # a course MIG slice
    assert resident_fits(100, 200) and not resident_fits(101, 200)


def test_device_resident_setting(split):
    assert device_resident("auto", split, "cpu") is False  # auto: CUDA only
    assert device_resident(True, split, "cpu") is True
    assert device_resident(False, split, "cpu") is False


def test_a_split_that_cannot_fit_on_the_device_is_one_clear_error(monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.25 GiB")

    x = np.zeros((4, 96, 96, 3), np.uint8)
    x.setflags(write=False)  # as a memory-mapped split: copied, not shared
    monkeypatch.setattr(torch, "empty", no_memory)
    with pytest.raises(PcamflowError, match=r"training.device_resident: the train split .* does not fit"):
        resident_copy(x, torch.device("cpu"))


def test_balanced_sampling_draws_classes_equally():
    y = (np.arange(1000) < 100).astype(np.uint8)  # 10 % positives
    x = np.zeros((1000, 96, 96, 3), dtype=np.uint8)
    loader = BatchLoader(Split(x, y, np.arange(1000)), 100, seed=0, balanced=True)
    drawn = torch.cat([b[1] for b in loader]).float()
    assert len(drawn) == 1000
    assert 0.45 < drawn.mean().item() < 0.55


def test_d4_matches_flips_and_rotations():
    x = torch.randint(0, 255, (3, 96, 96, 3), dtype=torch.uint8)
    views = []
    for t in range(D4_SIZE):
        expected = torch.rot90(x.flip(2) if t >= 4 else x, t % 4, dims=(1, 2))
        assert torch.equal(apply_d4(x, t), expected)
        views.append(expected)
    assert len({v.numpy().tobytes() for v in views}) == D4_SIZE
    per_sample = apply_d4(x, torch.tensor([0, 5, 7]))
    for i, t in enumerate((0, 5, 7)):
        assert torch.equal(per_sample[i], views[t][i])


def test_evaluation_input_is_normalised_and_never_augmented(store, split):
    stats = load_stats(store)
    x = torch.from_numpy(split.x[:6].copy())
    transform = BatchTransform(stats, augment=True, color_jitter=0.5)
    out = transform.to_input(x, train=False, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    expected = ((x.float() / 255 - mean) / std).permute(0, 3, 1, 2)
    assert out.shape == (6, 3, 96, 96) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    # train-only statistics make the train split roughly zero-mean, unit-variance
    full = transform.to_input(torch.from_numpy(np.array(split.x)), train=False)
    torch.testing.assert_close(full.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3, rtol=0)


def test_training_input_is_a_seeded_d4_view_of_each_tile(store, split):
    transform = BatchTransform(load_stats(store))
    x = torch.from_numpy(split.x[:16].copy())
    plain = transform.to_input(x, train=False)
    a = transform.to_input(x, train=True, generator=torch.Generator().manual_seed(5))
    b = transform.to_input(x, train=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    used = set()
    for i in range(16):
        matches = [
            t
            for t in range(D4_SIZE)
            if torch.equal(a[i], torch.rot90(plain[i].flip(2) if t >= 4 else plain[i], t % 4, dims=(1, 2)))
        ]
        assert matches, f"sample {i} is not a D4 view of its tile"
        used.add(matches[0])
    assert len(used) > 1  # per-sample draws, not one transform for the batch


def test_colour_jitter_changes_training_input_only(store, split):
    stats = load_stats(store)
    x = torch.from_numpy(split.x[:4].copy())
    jitter = BatchTransform(stats, augment=False, color_jitter=0.3)
    still = BatchTransform(stats, augment=False)
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(jitter.to_input(x, train=True, generator=gen), still.to_input(x, train=False))
    assert torch.equal(jitter.to_input(x, train=False), still.to_input(x, train=False))


def test_channels_last_gives_the_same_values_in_channels_last_layout(store, split):
    stats = load_stats(store)
    x = torch.from_numpy(split.x[:4].copy())
    cl = BatchTransform(stats, channels_last=True).to_input(x, train=False)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, BatchTransform(stats).to_input(x, train=False))


@pytest.mark.parametrize("threads", [1, 2])  # 1: in the calling thread; 2: over numba's threads
@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"color_jitter": 0.3},
        {"channels_last": True},
        {"color_jitter": 0.3, "channels_last": True},
        {"augment": False},
    ],
    ids=["d4", "jitter", "channels_last", "jitter_channels_last", "no_augment"],
)
def test_compiled_cpu_transform_gives_the_torch_ops_values_bit_for_bit(
    store, split, batch, options, threads, accelerated
):
    stats = load_stats(store)
    x = torch.from_numpy(np.array(split.x[np.arange(batch) % len(split.x)]))
    compiled = BatchTransform(stats, **options)
    torch_ops = BatchTransform(stats, cpu_accelerator="off", **options)
    assert compiled.accelerated and not torch_ops.accelerated
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for train in (True, False):
            a = compiled.to_input(x, train=train, generator=torch.Generator().manual_seed(3))
            b = torch_ops.to_input(x, train=train, generator=torch.Generator().manual_seed(3))
            assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (batch, 3, 96, 96)
            assert a.stride() == b.stride()
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("size", [1, 2, 5, 16, 24])
def test_compiled_cpu_transform_handles_other_tile_sizes_bit_for_bit(store, size, accelerated):
    x = torch.from_numpy(np.random.default_rng(size).integers(0, 256, (24, size, size, 3), dtype=np.uint8))
    stats = load_stats(store)
    compiled, torch_ops = BatchTransform(stats), BatchTransform(stats, cpu_accelerator="off")
    a = compiled.to_input(x, train=True, generator=torch.Generator().manual_seed(size))
    b = torch_ops.to_input(x, train=True, generator=torch.Generator().manual_seed(size))
    assert a.shape == (24, 3, size, size) and torch.equal(a, b)


def test_compiled_transform_called_from_two_threads_at_once_gives_each_its_own_values(
    store, split, accelerated
):
    transform = BatchTransform(load_stats(store))
    x = torch.from_numpy(np.array(split.x[np.arange(40) % len(split.x)]))

    def run(seed):
        return transform.to_input(x, train=True, generator=torch.Generator().manual_seed(seed))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the compiled pass shares the 40 tiles over numba's 2 threads
    try:
        expected = [run(seed) for seed in range(8)]
        with ThreadPoolExecutor(2) as pool:  # numba's thread pool takes one call at a time: the other waits
            for _ in range(5):
                got = list(pool.map(run, range(8)))
                assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [1, 2, 5, 96])
def test_d4_affine_form_gives_every_index_map(size):
    """The compiled pass's affine form of each D4 element moves every pixel where the torch ops do."""
    pixels = torch.arange(size * size).view(1, size, size, 1)  # each pixel holds its own number
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    for t, (base, row_step, col_step) in enumerate(d4_affine(size)):
        np.testing.assert_array_equal(base + i * row_step + j * col_step, apply_d4(pixels, t)[0, :, :, 0])


@pytest.mark.parametrize("setting", ["auto", "off"])
def test_the_transform_refuses_tiles_it_was_not_written_for(store, setting):
    transform = BatchTransform(load_stats(store), cpu_accelerator=setting)
    for shape in ((2, 96, 64, 3), (2, 96, 96, 4)):
        with pytest.raises(ValueError, match=r"square RGB tiles"):
            transform.to_input(torch.zeros(shape, dtype=torch.uint8), train=False)


class _CentreProbe(torch.nn.Module):
    """Not D4-invariant: looks at one corner, so TTA changes its output."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x[:, :, :8, :8].mean(dim=(2, 3)))


def test_predict_proba_in_order_batch_size_free_and_tta_averages_d4(store, split):
    stats = load_stats(store)
    torch.manual_seed(0)
    model = _CentreProbe().train()
    x = np.array(split.x[:23])
    prob = predict_proba(model, x, stats, batch_size=5)
    assert not model.training
    assert prob.shape == (23,) and np.all((prob >= 0) & (prob <= 1))
    with torch.no_grad():
        inputs = BatchTransform(stats).to_input(torch.from_numpy(x), train=False)
        expected = torch.softmax(model(inputs), 1)[:, 1].double().numpy()
    np.testing.assert_allclose(prob, expected, rtol=1e-6)
    np.testing.assert_allclose(predict_proba(model, x, stats, batch_size=256), prob, rtol=1e-6)
    tta = predict_proba(model, x, stats, batch_size=7, tta=True)
    views = [predict_proba(model, apply_d4(torch.from_numpy(x), t).numpy(), stats) for t in range(D4_SIZE)]
    np.testing.assert_allclose(tta, np.mean(views, axis=0), rtol=1e-6)
    assert not np.allclose(tta, prob)


def test_predict_proba_with_the_plain_result_predicts_only_the_seven_other_views(store, split):
    stats = load_stats(store)
    torch.manual_seed(0)
    model = _CentreProbe()
    x = np.array(split.x[:23])
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    plain = predict_proba(model, x, stats, batch_size=23)
    tta = predict_proba(model, x, stats, batch_size=23, tta=True)
    passes.clear()
    reused = predict_proba(model, x, stats, batch_size=23, tta=True, plain=plain)
    assert len(passes) == D4_SIZE - 1
    np.testing.assert_array_equal(reused, tta)
