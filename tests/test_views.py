"""Views as recipes: drawn as a pure function of (seed, epoch, index), rendered a batch at a time, and
bit for bit what torchvision's own transforms make of the same crop and flip."""
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader
from test_data import write_cifar10

from common.data import build_dataset
from common.views import Recipes, StoredImages
from student_trainer.engine.data_order import EpochSampler, RenderedViews


def _by_torchvision(pixels, recipe: tuple[int, int, bool], pad: int, mean, std) -> torch.Tensor:
    """The reference: pad, crop, flip, ToTensor, Normalize, as the data set's per-image transforms do."""
    top, left, flip = recipe
    image = TF.pad(Image.fromarray(pixels), pad)
    image = TF.crop(image, top + pad, left + pad, pixels.shape[0], pixels.shape[1])
    if flip:
        image = TF.hflip(image)
    return TF.normalize(TF.to_tensor(image), mean, std)


def test_a_rendered_view_is_what_torchvisions_transforms_make_of_its_crop_and_flip(tmp_path):
    write_cifar10(tmp_path, per_batch=8)
    spec = build_dataset("cifar10", str(tmp_path))
    views = spec.train_views
    assert (views.pad, views.flip, len(views)) == (4, True, len(spec.train))
    indices = torch.arange(len(views))
    recipes = views.draw(seed=3, epoch=2, indices=indices)
    rendered = views.render(recipes)
    assert rendered.shape == (40, 3, 32, 32) and rendered.dtype == torch.float32
    for i in indices.tolist():
        recipe = (int(recipes.top[i]), int(recipes.left[i]), bool(recipes.flip[i]))
        expected = _by_torchvision(spec.train.data[i], recipe, 4, spec.mean, spec.std)
        assert torch.equal(rendered[i], expected), (i, recipe)
    # the extremes of the crop and both flips, whatever the draw gave
    side = torch.full((4,), 32)
    corners = Recipes(torch.tensor([0, 1, 2, 3]), torch.tensor([-4, 4, -4, 4]), torch.tensor([-4, 4, 4, -4]),
                      side, side, torch.tensor([False, True, True, False]))
    for i, image in enumerate(views.render(corners)):
        recipe = (int(corners.top[i]), int(corners.left[i]), bool(corners.flip[i]))
        assert torch.equal(image, _by_torchvision(spec.train.data[i], recipe, 4, spec.mean, spec.std))


def _split(pad: int, flip: bool, n: int = 4000) -> StoredImages:
    return StoredImages(torch.zeros(n, 1, 6, 6, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), pad, flip,
                        (0.5,), (0.5,))


def test_a_view_depends_on_seed_epoch_and_index_alone():
    many, split = torch.arange(4000), _split(2, True)
    first = split.draw(0, 1, many)
    again = split.draw(0, 1, torch.tensor([3999, 7, 1234]))  # other batch, other order
    for field in Recipes.FIELDS:
        assert torch.equal(getattr(again, field), getattr(first, field)[[3999, 7, 1234]]), field
    assert not torch.equal(split.draw(0, 2, many).left, first.left)
    assert not torch.equal(split.draw(1, 1, many).top, first.top)
    for offsets in (first.top, first.left):  # every offset in [-pad, pad], about equally often
        counts = torch.bincount(offsets + 2, minlength=5)
        assert len(counts) == 5 and counts.min() > 700, counts.tolist()
    assert (first.height == 6).all() and (first.width == 6).all()
    assert 0.45 < first.flip.float().mean() < 0.55
    plain = _split(0, False).draw(0, 1, many)
    assert not plain.top.any() and not plain.left.any() and not plain.flip.any()


def test_a_subset_renders_the_images_its_items_hold(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    spec = build_dataset("cifar10", str(tmp_path), train_size=7, test_size=2, augment=False)
    views = spec.train_views
    assert (len(views), views.pad, views.flip) == (7, 0, False)
    rendered = views.render(views.draw(0, 1, torch.arange(7)))
    for i in range(7):
        image, label = spec.train[i]
        assert torch.equal(rendered[i], image) and int(views.labels[i]) == label
    synthetic = build_dataset("synthetic", train_size=16, test_size=4, image_shape=(3, 8, 8))
    recipes = synthetic.train_views.draw(5, 1, torch.arange(16))
    flipped = synthetic.train_views.render(recipes)
    for i in range(16):
        stored = synthetic.train.images[i]
        assert torch.equal(flipped[i], stored.flip(-1) if recipes.flip[i] else stored)


def test_rendered_batches_are_the_same_with_or_without_loader_processes():
    spec = build_dataset("synthetic", train_size=40, test_size=4, image_shape=(1, 8, 8))

    def batches(workers):
        sampler = EpochSampler(40, seed=2, batch_size=8)
        sampler.set_epoch(3, start=8)
        loader = DataLoader(RenderedViews(spec.train_views, seed=2), batch_size=8, sampler=sampler,
                            collate_fn=RenderedViews.collate, num_workers=workers)
        return list(loader)

    alone, helped = batches(0), batches(2)
    assert len(alone) == 4
    for one, other in zip(alone, helped):
        assert len(one) == 4  # images, labels, indices and the views' recipes
        assert all(torch.equal(a, b) for a, b in zip(one, other))
