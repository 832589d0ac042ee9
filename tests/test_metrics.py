"""Each metric against the package that defines it, on tiny random images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from casd.evaluation import metrics
from casd.errors import WeightsError


def _pairs(n=3, h=40, w=28, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    # targets correlated with the inputs, so SSIM is far from 0 and differs per pair
    noise = rng.normal(0, 30 * np.arange(1, n + 1)[:, None, None, None], size=a.shape)
    b = np.clip(a.astype(float) + noise, 0, 255).astype(np.uint8)
    return a, b


def _skimage_ssim(x, y, data_range):
    from skimage.metrics import structural_similarity

    return structural_similarity(x.astype(float), y.astype(float), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range, channel_axis=-1)


def test_ssim_is_the_fields_with_the_generated_images_range():
    a, b = _pairs()
    a[1] = 40 + a[1] // 4  # a generated image spanning 40..103, not 0..255
    assert a[1].max() - a[1].min() < 100
    ours = metrics.ssim(a, b).numpy()
    ref = [_skimage_ssim(x, y, float(x.max()) - float(x.min())) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert len(set(np.round(ours, 6))) == len(ours)  # the pairs really differ
    np.testing.assert_allclose(metrics.ssim(a, a).numpy(), 1.0)
    # the range is the generated image's, not the ground truth's: the arguments do not commute
    assert metrics.ssim(b[1:2], a[1:2]).item() != pytest.approx(ours[1], rel=1e-3)


def test_ssim_fixed_range_is_a_separate_number():
    a, b = _pairs()
    a[1] = 40 + a[1] // 4
    fixed = metrics.ssim(a, b, data_range=255).numpy()
    np.testing.assert_allclose(fixed, [_skimage_ssim(x, y, 255) for x, y in zip(a, b)], rtol=1e-10, atol=1e-12)
    assert fixed[1] != pytest.approx(metrics.ssim(a, b).numpy()[1], rel=1e-3)


def test_ssim_refuses_images_smaller_than_window():
    a = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(a, a)


def test_psnr_equals_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pairs()
    ref = [peak_signal_noise_ratio(y, x, data_range=255) for x, y in zip(a, b)]
    np.testing.assert_allclose(metrics.psnr(a, b).numpy(), ref, rtol=1e-12)


@pytest.fixture(scope="module")
def random_lpips():
    """The package's own network with a random AlexNet trunk and random linear layers."""
    import lpips

    torch.manual_seed(0)
    with metrics._quiet_torchvision():
        ref = lpips.LPIPS(pretrained=False, pnet_rand=True, net="alex", version="0.1", verbose=False).eval()
    for lin in ref.lins:  # the package starts linear layers at default init; make them distinct
        torch.nn.init.uniform_(lin.model[1].weight, 0.0, 1.0)
    return ref


def test_lpips_equals_package_with_same_random_weights(random_lpips):
    import lpips

    ref = random_lpips
    trunk = {f"features.{i}.{p}": getattr(getattr(getattr(ref.net, f"slice{k}"), str(i)), p)
             for i, k in {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}.items() for p in ("weight", "bias")}
    linear = {f"lin{i}.model.1.weight": ref.lins[i].model[1].weight for i in range(5)}
    ours = metrics.build_lpips("alex", trunk=trunk, linear=linear)

    a, b = _pairs(h=64, w=44)  # the AlexNet trunk needs the demo's 64x44 at least
    got = metrics.lpips_distance(ours, a, b)
    want = torch.stack([ref(lpips.im2tensor(x), lpips.im2tensor(y)).reshape(()) for x, y in zip(a, b)])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-7)
    assert (got > 0).all() and len(set(got.tolist())) == len(got)
    assert torch.allclose(metrics.lpips_distance(ours, a, a), torch.zeros(len(a)), atol=1e-7)


def test_lpips_real_path_loads_package_linear_layers_and_names_missing_trunk(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the trunk cannot be found
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth"):
        metrics.build_lpips("alex", "auto")
    with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
        metrics.build_lpips("vgg", "auto")
    net = metrics.build_lpips("alex", trunk=None, linear="package")
    import lpips

    stored = torch.load(f"{lpips.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.lin2.model[1].weight, stored["lin2.model.1.weight"])
    assert net.lins[2].model[1].weight is net.lin2.model[1].weight


def test_lpips_vgg_equals_package_with_same_random_weights():
    import lpips

    torch.manual_seed(1)
    with metrics._quiet_torchvision():
        ref = lpips.LPIPS(pretrained=False, pnet_rand=True, net="vgg", version="0.1", verbose=False).eval()
    for lin in ref.lins:
        torch.nn.init.uniform_(lin.model[1].weight, 0.0, 1.0)
    convs = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    trunk = {f"features.{i}.{p}": getattr(getattr(getattr(ref.net, f"slice{k}"), str(i)), p)
             for i, k in convs.items() for p in ("weight", "bias")}
    linear = {f"lin{i}.model.1.weight": ref.lins[i].model[1].weight for i in range(5)}
    ours = metrics.build_lpips("vgg", trunk=trunk, linear=linear)
    a, b = _pairs(n=2, h=32, w=32)
    want = torch.stack([ref(lpips.im2tensor(x), lpips.im2tensor(y)).reshape(()) for x, y in zip(a, b)])
    torch.testing.assert_close(metrics.lpips_distance(ours, a, b), want.float(), rtol=1e-5, atol=1e-7)


def test_frechet_distance_equals_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(80, 12))
    f2 = rng.normal(size=(90, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    args = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    ours, ref = metrics.frechet_distance(*args), calculate_frechet_distance(*args)
    assert ours == pytest.approx(ref, rel=1e-8)
    assert ours > 1.0
    assert metrics.frechet_distance(args[0], args[1], args[0], args[1]) == pytest.approx(0.0, abs=1e-8)
    # a singular covariance (fewer samples than dimensions), as with small evaluation sets
    f3 = rng.normal(size=(6, 12))
    args = (f1.mean(0), np.cov(f1, rowvar=False), f3.mean(0), np.cov(f3, rowvar=False))
    ref = calculate_frechet_distance(*args)
    assert metrics.frechet_distance(*args) == pytest.approx(ref, rel=1e-5)
    stats = metrics.GaussianStats(12)
    stats.update(torch.from_numpy(f3))
    assert stats.factor is not None  # the low-rank path for sets smaller than the dimension
    assert metrics.frechet_distance(args[0], args[1], stats.mean, stats.covariance, stats.factor) == \
        pytest.approx(ref, rel=1e-5)


def test_gaussian_stats_match_numpy_in_batches():
    rng = np.random.default_rng(2)
    feats = rng.normal(loc=5.0, size=(23, 7))
    stats = metrics.GaussianStats(7)
    for chunk in np.array_split(feats, 4):
        stats.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(stats.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-12)
    assert stats.factor is None  # more vectors than dimensions: no low-rank factor kept


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    net = metrics.build_inception(weights=None)
    for m in net.modules():  # He init keeps random pool3 features O(1) instead of vanishing
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


def _write_images(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"im{i:02d}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


def test_inception_features_match_pytorch_fid_activations(tmp_path, random_inception):
    from pytorch_fid.fid_score import get_activations

    a, _ = _pairs(n=3, h=32, w=22)
    files = _write_images(tmp_path / "a", a)
    ref = get_activations([str(f) for f in files], random_inception, batch_size=3, dims=2048, num_workers=0)
    stats = metrics.feature_statistics(random_inception, files, batch_size=2)  # batches of 2 and 1
    np.testing.assert_allclose(stats.mean, ref.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats.factor.T @ stats.factor, np.cov(ref, rowvar=False), rtol=1e-3, atol=1e-6)
    assert ref.std(0).mean() > 1e-3  # features that vary between images


def test_fid_of_identical_sets_is_zero_and_stats_are_cached(tmp_path, random_inception):
    a, b = _pairs(n=2, h=32, w=22)
    files_a = _write_images(tmp_path / "a", a)
    files_b = _write_images(tmp_path / "b", b)
    mu, sigma, cache = metrics.cached_statistics(random_inception, files_a, tmp_path / "cache", "w1", 4)
    assert cache is not None and cache.is_file()
    stats = metrics.feature_statistics(random_inception, files_a, batch_size=1)
    assert metrics.fid_from_stats((mu, sigma), stats) == pytest.approx(0, abs=1e-6 * np.trace(sigma))
    stats_b = metrics.feature_statistics(random_inception, files_b, batch_size=4)
    assert metrics.fid_from_stats((mu, sigma), stats_b) > 1e-3 * np.trace(sigma)
    # the cache is read back (not recomputed), and its key depends on the weights and the files
    np.savez(cache, mu=mu + 1, sigma=sigma)
    assert np.allclose(metrics.cached_statistics(random_inception, files_a, tmp_path / "cache", "w1")[0], mu + 1)
    assert metrics.file_list_key(files_a, "w2") != metrics.file_list_key(files_a, "w1")
    assert metrics.file_list_key(files_a[:1], "w1") != metrics.file_list_key(files_a, "w1")


def test_inception_equals_pytorch_fid_class_with_same_weights(monkeypatch, random_inception):
    from pytorch_fid import inception as pfi

    # pytorch-fid's own constructor, handed our architecture instead of downloading its weights
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: metrics._fid_inception_v3(None))
    reference = pfi.InceptionV3([3]).eval()
    assert [k for k in reference.state_dict()] == [k for k in random_inception.state_dict()]
    reference.load_state_dict(random_inception.state_dict())
    a, _ = _pairs(n=2, h=32, w=22)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = reference(x)[0].flatten(1).double()
    torch.testing.assert_close(metrics.inception_features(random_inception, a), want)


def test_inception_real_path_names_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        metrics.build_inception("auto")


# --------------------------------------------------------------------------- region colours, parsing maps

PANTS, HAIR, FACE, UPPER = 1, 2, 4, 5


def _person(colours, h=16, w=12):
    """A hand-made person: hair, face, upper clothes and pants in horizontal bands of the given colours."""
    regions = np.zeros((h, w), np.uint8)
    regions[0:3], regions[3:6], regions[6:11], regions[11:15] = HAIR, FACE, UPPER, PANTS
    image = np.full((h, w, 3), 255, np.uint8)  # white background
    for region, colour in colours.items():
        image[regions == region] = colour
    return image, regions


def test_colour_errors_perfect_transfer_and_source_blind_image():
    colours = {HAIR: (20, 10, 5), FACE: (230, 180, 150), UPPER: (30, 60, 200), PANTS: (40, 140, 40)}
    truth, target_regions = _person(colours)
    source, source_regions = _person(colours, h=20)  # same person, another frame
    training_mean = np.full((8, 3), np.nan)
    training_mean[[HAIR, FACE, UPPER, PANTS]] = [(60, 40, 30), (200, 160, 140), (120, 40, 120), (100, 80, 60)]
    batch = lambda *images: np.stack(images)  # noqa: E731

    perfect = metrics.colour_errors(batch(truth), batch(truth), batch(target_regions), batch(source),
                                    batch(source_regions), training_mean)
    summary = metrics.colour_gap(perfect)
    assert summary["error"] == 0 and summary["error_source_colours"] == 0 and summary["gap_closed"] == 1
    assert summary["error_training_mean"] > 30
    # a source whose clothes are greyer than the target's: perfect transfer is the source's colours
    greyer, _ = _person({**colours, UPPER: (60, 80, 160)}, h=20)
    blind_image, _ = _person({r: tuple(training_mean[r].astype(np.uint8)) for r in colours})
    for generated, gap in ((greyer[:16], 1.0), (blind_image, 0.0)):
        errors = metrics.colour_errors(batch(generated), batch(truth), batch(target_regions), batch(greyer),
                                       batch(source_regions), training_mean)
        summary = metrics.colour_gap(errors)
        assert summary["gap_closed"] == pytest.approx(gap, abs=1e-12)
    np.testing.assert_allclose(errors["model"], errors["training_mean"])  # the blind image scores the blind reference
    # upper clothes of the blind image: RMS over RGB of (120, 40, 120) vs (30, 60, 200)
    expected = np.sqrt(((np.array([120, 40, 120]) - [30, 60, 200]) ** 2).mean())
    assert errors["model"][0, UPPER] == pytest.approx(expected)
    assert np.isnan(errors["model"][0, [0, 3, 6, 7]]).all()  # background, glove, arms, legs: not in the table


def test_colour_errors_ignore_regions_missing_from_the_source():
    truth, target_regions = _person({HAIR: (0, 0, 0), FACE: (200, 150, 120), UPPER: (10, 20, 30), PANTS: (5, 5, 5)})
    source_regions = target_regions.copy()
    source_regions[source_regions == PANTS] = 0  # the source shows no pants
    errors = metrics.colour_errors(truth[None], truth[None], target_regions[None], truth[None], source_regions[None],
                                   np.zeros((8, 3)))
    assert all(np.isnan(e[0, PANTS]) for e in errors.values())
    assert all(np.isfinite(e[0, UPPER]) for e in errors.values())


def test_region_mean_colours_vectorised_equals_a_loop():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 10, 7, 3), dtype=np.uint8)
    regions = rng.integers(0, 8, (3, 10, 7)).astype(np.uint8)
    regions[1][regions[1] == 2] = 0  # region 2 absent from image 1
    means = metrics.region_mean_colours(images, regions, 8)
    for b in range(3):
        for r in range(8):
            mask = regions[b] == r
            if mask.any():
                np.testing.assert_allclose(means[b, r], images[b][mask].mean(0))
            else:
                assert np.isnan(means[b, r]).all()


def test_parsing_scores_on_hand_made_maps():
    truth = np.array([[[0, 0, 1, 1], [2, 2, 1, 1]]])
    assert metrics.parsing_scores(metrics.confusion_matrix(truth, truth, 8)) == {"pixel_accuracy": 1.0, "miou": 1.0}
    predicted = np.array([[[0, 1, 1, 1], [2, 2, 1, 3]]])
    scores = metrics.parsing_scores(metrics.confusion_matrix(predicted, truth, 8))
    assert scores["pixel_accuracy"] == 6 / 8
    # IoU: 0: 1/2, 1: 3/5 (hits 3; truth 4, predicted 4 -> union 5), 2: 2/2, 3: 0/1; regions 4..7 absent
    assert scores["miou"] == pytest.approx((1 / 2 + 3 / 5 + 1 + 0) / 4)


# --------------------------------------------------------------------------- pattern transfer

def _garment(h=24, w=16, pattern=None, flat=None):
    """Hand-made: hair band on top, upper clothes below; the clothes striped in two colours (rows of 2 pixels),
    or one flat colour."""
    regions = np.zeros((h, w), np.uint8)
    regions[1:5, 1:-1], regions[5:-1, 1:-1] = HAIR, UPPER
    image = np.full((h, w, 3), 255, np.uint8)
    image[regions == HAIR] = (20, 10, 5)
    if flat is not None:
        image[regions == UPPER] = flat
    else:
        a, b = pattern
        rows = np.arange(h)[:, None] // 2 % 2 == 0
        image[(regions == UPPER) & rows] = a
        image[(regions == UPPER) & ~rows] = b
    return image, regions


def test_pattern_stats_vectorised_equal_a_loop_over_interiors():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 12, 9, 3), dtype=np.uint8)
    regions = np.zeros((2, 12, 9), np.uint8)
    regions[:, 2:10, 1:8] = UPPER
    regions[1, 6:10, 1:8] = PANTS
    stats = metrics.region_pattern_stats(images, regions, 8)
    inner = metrics.region_interiors(regions)
    for b in range(2):
        for r in range(8):
            mask = inner[b] == r
            if mask.sum() < metrics.PATTERN_MIN_PIXELS:
                assert np.isnan(stats[b, r]).all()
                continue
            pixels = images[b].astype(float)
            np.testing.assert_allclose(stats[b, r, :3], pixels[mask].std(0))
            diffs = [abs(pixels[y, x] - pixels[y + dy, x + dx]) for y, x in zip(*np.nonzero(mask))
                     for dy, dx in ((0, 1), (1, 0)) if y + dy < 12 and x + dx < 9 and mask[y + dy, x + dx]]
            np.testing.assert_allclose(stats[b, r, 3:], np.mean(diffs, 0))
    # the border ring of each region is left out: a region 3 pixels high has a 1-pixel interior row
    assert (inner[0][2] == -1).all() and (inner[0][3, 2:7] == UPPER).all() and inner[0][3, 1] == -1


def test_pattern_gap_perfect_flat_and_blurred_transfer():
    from PIL import Image, ImageFilter

    stripes = ((200, 30, 30), (30, 30, 200))
    truth, target_regions = _garment(pattern=stripes)
    source, source_regions = _garment(h=28, pattern=stripes)   # the same garment in another frame
    mean = truth[target_regions == UPPER].mean(0).round().astype(np.uint8)
    flat, _ = _garment(flat=mean)                              # the right colour, no pattern
    blurred = np.asarray(Image.fromarray(truth).filter(ImageFilter.GaussianBlur(1.2)))
    batch = lambda image: image[None]  # noqa: E731

    def gap(generated):
        errors = metrics.pattern_errors(batch(generated), batch(truth), batch(target_regions), batch(source),
                                        batch(source_regions), [UPPER], min_strength=8.0)
        assert np.isnan(errors["model"][0, HAIR])   # hair is not a patterned region here
        return metrics.pattern_gap(errors)

    perfect = gap(truth)
    assert perfect["error"] == pytest.approx(0) and perfect["gap_closed"] == pytest.approx(1, abs=0.05)
    assert perfect["error_flat"] > 50   # two colours 170 apart: a spread of about 85 per changing channel
    assert gap(flat)["gap_closed"] == pytest.approx(0, abs=0.02)
    assert 0.05 < gap(blurred)["gap_closed"] < 0.9   # blur keeps some spread, loses the sharp changes


def test_pattern_counts_only_patterned_sources():
    truth, regions = _garment(flat=(30, 60, 200))
    errors = metrics.pattern_errors(truth[None], truth[None], regions[None], truth[None], regions[None], [UPPER],
                                    min_strength=8.0)
    assert all(np.isnan(e).all() for e in errors.values())   # a solid garment: nothing to carry
    assert metrics.pattern_gap(errors)["gap_closed"] is None
