"""Views of image files as recipes: RandomResizedCrop boxes drawn from (seed, epoch, index) and the image's
size, rendered bit for bit as torchvision's functional ops render the same box of the same decode; bad files
are one line."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import pil_loader
from torchvision.transforms import InterpolationMode

from common.image_files import ImageFiles, resized_crop_boxes
from common.views import Recipes, Views, check, render_views
from student_trainer.engine.data_order import EpochSampler, RenderedViews

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 24


def write_files(root, rng=None):
    """Mixed sizes and modes, as users' folders hold them: RGB and CMYK JPEGs, grey, palette and RGBA PNGs."""
    rng = rng or np.random.default_rng(0)
    made = []
    for i, (mode, ext, (h, w)) in enumerate([("RGB", "jpg", (40, 56)), ("L", "png", (33, 30)),
                                              ("CMYK", "jpg", (50, 37)), ("P", "png", (29, 64)),
                                              ("RGBA", "png", (45, 45)), ("RGB", "jpg", (8, 90))]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        path = root / f"c{i % 2}" / f"{i}.{ext}"
        image.save(path, quality=90) if ext == "jpg" else image.save(path)
        made.append(f"c{i % 2}/{i}.{ext}")
    return made


@pytest.fixture
def files(tmp_path):
    paths = write_files(tmp_path)
    return ImageFiles(str(tmp_path), tuple(paths), torch.arange(len(paths)) % 2, SIZE, MEAN, STD)


def by_torchvision(path, top, left, h, w, flip):
    """The reference: ImageFolder's own loader, resized_crop, hflip, ToTensor, Normalize."""
    image = TF.resized_crop(pil_loader(path), top, left, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR,
                            antialias=True)
    return TF.normalize(TF.to_tensor(TF.hflip(image) if flip else image), MEAN, STD)


def test_a_rendered_view_is_torchvisions_resized_crop_of_the_same_box_bit_for_bit(files):
    indices = torch.arange(len(files))
    for epoch in (1, 2, 3):
        images, recipes = files.drawn_and_rendered(7, epoch, indices)
        assert images.shape == (len(files), 3, SIZE, SIZE) and images.dtype == torch.float32
        assert torch.equal(files.render(recipes), images)  # the server's way: recipes only, then the files
        for i in indices.tolist():
            box = [int(getattr(recipes, f)[i]) for f in ("top", "left", "height", "width")]
            assert torch.equal(images[i], by_torchvision(files.path(i), *box, bool(recipes.flip[i]))), (epoch, i)


def test_boxes_follow_random_resized_crops_rule_and_depend_on_seed_epoch_and_index_alone():
    n = 4000
    heights, widths = np.full(n, 300), np.full(n, 400)
    top, left, h, w = resized_crop_boxes(0, 1, np.arange(n), heights, widths)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 300).all() and (left + w <= 400).all()
    area, ratio = h * w / (300 * 400), w / h
    assert area.min() > 0.07 and area.max() <= 1.0 and 0.1 < np.median(area) < 0.7
    assert ratio.min() > 0.74 and ratio.max() < 1.35  # rounding moves the ratio a little, as torchvision's does
    again = resized_crop_boxes(0, 1, np.array([3999, 7]), heights[:2], widths[:2])
    assert all(np.array_equal(a, b[[3999, 7]]) for a, b in zip(again, (top, left, h, w)))
    assert not np.array_equal(resized_crop_boxes(0, 2, np.arange(n), heights, widths)[0], top)
    assert not np.array_equal(resized_crop_boxes(1, 1, np.arange(n), heights, widths)[3], w)
    # an image too thin for any try falls back to the centre crop, cut to the ratio range
    box = [int(b[0]) for b in resized_crop_boxes(0, 1, np.array([0]), np.array([8]), np.array([90]))]
    assert box == [0, (90 - round(8 * 4 / 3)) // 2, 8, round(8 * 4 / 3)]


def test_mixed_views_of_different_sizes_are_a_recipe_too(files):
    main = Views(files.draw(1, 1, torch.tensor([0, 1, 2])))
    partner = Views(files.draw(1, 1, torch.tensor([5, 3, 4])))  # other sources, other sizes
    mix = torch.tensor([0.25, 0.5, 0.75])
    mixed = main.mixed_with(partner, mix)
    again = Views.from_array(mixed.as_array())
    check(files, again)
    a, b = files.render(main.main), files.render(partner.main)
    m = mix.view(-1, 1, 1, 1)
    assert torch.equal(render_views(files, again), (1 - m) * a + m * b)


def test_a_subset_draws_and_renders_what_the_whole_split_would(files):
    part = files.subset([4, 1])
    images, recipes = part.drawn_and_rendered(3, 1, torch.tensor([0, 1]))
    whole_images, whole = files.drawn_and_rendered(3, 1, torch.tensor([4, 1]))
    assert torch.equal(images, whole_images)
    assert np.array_equal(part.to_split(Views(recipes)).as_array(), Views(whole).as_array())


def test_loader_processes_render_the_same_batches(files):
    def batches(workers):
        sampler = EpochSampler(len(files), seed=2, batch_size=3)
        sampler.set_epoch(2)
        return list(DataLoader(RenderedViews(files, seed=2), batch_size=3, sampler=sampler,
                               collate_fn=RenderedViews.collate, num_workers=workers))
    alone, helped = batches(0), batches(2)
    assert len(alone) == 2
    for one, other in zip(alone, helped):
        assert all(torch.equal(a, b) for a, b in zip(one, other))


def _recipe(index, top, left, h, w, flip=False):
    t = lambda v: torch.tensor([v])  # noqa: E731
    return Recipes(t(index), t(top), t(left), t(h), t(w), torch.tensor([flip]))


def test_bad_files_and_boxes_are_one_line_naming_them(files, tmp_path):
    with pytest.raises(ValueError, match=r"lies outside c1/1\.png \(33 x 30\)"):
        files.render(_recipe(1, 10, 0, 30, 30))
    with pytest.raises(ValueError, match="below 1"):
        check(files, Views(_recipe(1, 0, 0, 0, 5)))
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(tmp_path / "c0" / "deep.png")
    (tmp_path / "c1" / "cut.jpg").write_bytes((tmp_path / "c0" / "0.jpg").read_bytes()[:200])
    for name, message in (("c0/deep.png", "16 or 32 bits"), ("c1/cut.jpg", "cannot read image"),
                          ("c1/gone.jpg", "No such file")):
        broken = ImageFiles(str(tmp_path), (name,), torch.zeros(1, dtype=torch.long), SIZE, MEAN, STD)
        with pytest.raises(ValueError) as err:
            broken.drawn_and_rendered(0, 1, torch.tensor([0]))
        text = str(err.value)
        assert message in text and name in text and "\n" not in text, text


def test_an_image_smaller_than_the_view_is_upscaled_as_torchvision_does(tmp_path):
    Image.fromarray(np.full((5, 7, 3), 200, dtype=np.uint8)).save(tmp_path / "tiny.png")
    tiny = ImageFiles(str(tmp_path), ("tiny.png",), torch.zeros(1, dtype=torch.long), SIZE, MEAN, STD)
    images, recipes = tiny.drawn_and_rendered(0, 1, torch.tensor([0]))
    box = [int(getattr(recipes, f)[0]) for f in ("top", "left", "height", "width")]
    assert torch.equal(images[0], by_torchvision(str(tmp_path / "tiny.png"), *box, bool(recipes.flip[0])))
    assert torch.allclose(images[0, :, 0, 0], (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD))
