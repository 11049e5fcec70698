"""The defaults tree: every configuration key, its default value, and why.

Each leaf is declared as ``K(default, "what it does; why this default")``. The type of a key is the
type of its default (an int is accepted where a float is expected; a list's element type is the type
of its first element), unless ``type=`` names it explicitly, which is needed for keys whose default
is ``None`` or an empty list. ``maskrcnn.config`` reads this tree, checks YAML files and command-line
overrides against it, and refuses unknown keys.

The model defaults reproduce torchvision's ``maskrcnn_resnet50_fpn`` (v1) exactly (see
``docs/conventions.md`` and ``docs/architecture.md``), so that torchvision checkpoints load and
give the same outputs. Sections are owned by the part of the code that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class K:
    """A configuration leaf: default value, a one-line explanation, and optionally its type."""

    default: Any
    doc: str
    type: Optional[type] = None  # element type for lists; value type for None defaults


DEFAULTS = {
    "output_dir": K("output", "Folder for checkpoints, metrics and predictions of a run."),
    "seed": K(0, "Seed for Python, NumPy and torch RNGs; a fixed seed makes runs reproducible."),
    "device": K("auto", "'auto' picks CUDA when available, else CPU; or 'cpu', 'cuda', 'cuda:1'."),
    "input": {
        "min_size": K(800, "Resize so the short side is this many pixels (torchvision min_size=800)."),
        "max_size": K(1333, "Cap on the long side after resizing (torchvision max_size=1333)."),
        "size_divisible": K(32, "Pad the batch to a multiple of this, so every FPN stride divides it."),
        "pixel_mean": K([0.485, 0.456, 0.406], "ImageNet RGB mean, in [0, 1] units (images are in [0, 1])."),
        "pixel_std": K([0.229, 0.224, 0.225], "ImageNet RGB std; the backbone was pre-trained with these."),
    },
    "model": {
        "num_classes": K(13, "Object categories, background excluded (ModaNet has 13; torchvision's 14 = 13 + 1)."),
        "weights": K("", "Weights to start from: ours, torchvision maskrcnn_resnet50_fpn or ImageNet resnet (converted); '' = none.", type=str),
        "mask_on": K(True, "Build the mask branch; False gives a Faster R-CNN (boxes only)."),
        "num_attributes": K(0, "Fine-grained attributes predicted per detection (multi-label head on the pooled 7x7 ROI features the box head reads, docs/extending.md); 0 = no attribute head, the model and checkpoints exactly as without it."),
        "attribute_names": K([], "Names of the attributes, in output order; filled from the data's attribute table at training so that checkpoints carry them (as they carry the class names).", type=str),
        "attribute_source_ids": K([], "The dataset's id of each attribute in attribute_names (e.g. Fashionpedia's 0..293), filled with them at training; the COCO results files write these in attribute_ids, as Fashionpedia's evaluation reads them. Empty: the 0-based positions.", type=int),
        "attribute_hidden_dim": K(256, "Width of the attribute head's hidden layer (its own small MLP over the flattened 7x7 pooled ROI features)."),
        "attribute_loss_weight": K(1.0, "Weight of loss_attributes in the total loss."),
        "attribute_pos_weight": K(1.0, "Weight of the positive term of each attribute's binary cross-entropy; > 1 counters rare attributes (most attributes are absent from most objects)."),
        "backbone": {
            "depth": K(50, "ResNet depth: 18, 34, 50 or 101; 50 is torchvision's maskrcnn_resnet50_fpn."),
            "frozen_stages": K(2, "Leading stages with frozen weights (1 = stem, 2 = stem + res2, ...); 2 = torchvision's trainable_layers=3."),
            "fpn_channels": K(256, "Channels of every FPN level P2-P6 and of the heads' inputs (FPN paper: 256)."),
        },
        "rpn": {
            "anchor_sizes": K([32, 64, 128, 256, 512], "One anchor size (sqrt of area, pixels) per level P2-P6 (FPN paper Sec. 4.1)."),
            "aspect_ratios": K([0.5, 1.0, 2.0], "Anchor aspect ratios h/w at every level: 3 anchors per position; add 4.0 for long garments (pretrained RPN rows of the kept ratios still load, docs/tuning.md)."),
            "fg_iou_thresh": K(0.7, "Anchors with IoU >= this with a GT box are positive (Faster R-CNN)."),
            "bg_iou_thresh": K(0.3, "Anchors with IoU < this with every GT box are negative; in between is ignored."),
            "batch_size_per_image": K(256, "Anchors sampled per image for the RPN losses (Faster R-CNN: 256)."),
            "positive_fraction": K(0.5, "At most this fraction of the sampled anchors is positive (Faster R-CNN: 1:1)."),
            "pre_nms_top_n_train": K(2000, "Proposals kept per FPN level before NMS in training (torchvision: 2000)."),
            "pre_nms_top_n_test": K(1000, "Proposals kept per FPN level before NMS at inference (torchvision: 1000)."),
            "post_nms_top_n_train": K(2000, "Proposals kept per image after NMS in training (torchvision: 2000)."),
            "post_nms_top_n_test": K(1000, "Proposals kept per image after NMS at inference (torchvision: 1000)."),
            "nms_thresh": K(0.7, "IoU above which NMS drops a lower-scoring proposal of the same level."),
            "min_size": K(1e-3, "Proposals with a side shorter than this (pixels) are dropped (torchvision: 1e-3)."),
            "score_thresh": K(0.0, "Proposals with objectness probability below this are dropped; 0 keeps all (torchvision)."),
        },
        "roi_heads": {
            "fg_iou_thresh": K(0.5, "ROIs with IoU >= this with a GT box are foreground (Fast R-CNN)."),
            "bg_iou_thresh": K(0.5, "ROIs with IoU < this with every GT box are background (0.5 = no ignored band)."),
            "batch_size_per_image": K(512, "ROIs sampled per image for the box and mask losses (torchvision: 512)."),
            "positive_fraction": K(0.25, "At most this fraction of the sampled ROIs is foreground (Fast R-CNN: 25 %)."),
            "box_coder_weights": K([10.0, 10.0, 5.0, 5.0], "Scale of the (dx, dy, dw, dh) box targets, so they have about unit variance."),
            "box_pooled_size": K(7, "ROIAlign output size for the box head (7x7, as in the paper)."),
            "mask_pooled_size": K(14, "ROIAlign output size for the mask head; the mask is twice this (28x28)."),
            "sampling_ratio": K(2, "ROIAlign bilinear samples per bin and axis (torchvision: 2)."),
            "aligned": K(False, "ROIAlign half-pixel shift; True is geometrically exact, False matches torchvision checkpoints."),
            "box_hidden_dim": K(1024, "Width of the box head's two fully connected layers (FPN paper: 1024)."),
            "mask_conv_dims": K([256, 256, 256, 256], "Widths of the mask head's 3x3 convs (Mask R-CNN Fig. 4: four 256s)."),
            "score_thresh": K(0.05, "Detections with a class score at or below this are dropped (torchvision: 0.05)."),
            "nms_thresh": K(0.5, "Per-class NMS IoU threshold for the final detections."),
            "detections_per_img": K(100, "Maximum detections per image, best scores first (COCO evaluates 100)."),
        },
    },
    "data": {
        "format": K("coco", "Annotation format: 'coco' (ModaNet, Fashionpedia, the synthetic set, prepared files), 'imaterialist' (train.csv) or 'deepfashion2' (annos/ folder)."),
        "train_annotations": K("", "Training annotations: a COCO JSON, iMaterialist's train.csv, or DeepFashion2's annos/ folder; each dataset's config sets it."),
        "train_images": K("", "Folder the training images' file names are relative to ('' = as written in the annotations)."),
        "val_annotations": K("", "Validation annotations, same format as training ('' = no validation; ModaNet's released val has none: make a split)."),
        "val_images": K("", "Folder of the validation images."),
        "categories": K("", "Class-table file or built-in name under data/categories/ (e.g. 'imaterialist27'); '' = the annotation file's own categories (or the format's built-in table)."),
        "label_descriptions": K("", "iMaterialist only: label_descriptions.json for the class names; '' = the one beside train.csv, else data/categories/imaterialist46."),
        "drop_categories": K([], "Source categories (names or source ids) whose instances are removed, e.g. iMaterialist's garment parts 27-45; none by default: train on every class of the table.", type=object),
        "merge_categories": K({}, "{source name or id: new name}: renames, or merges several sources into one class (e.g. boots and footwear -> shoe); empty = keep the table's names."),
        "category_match": K("id", "COCO files: how the file's own category names meet the class table of data.categories: 'id' = same ids, and a name that disagrees (after the table's aliases) stops loading with both names listed; 'name' = map each file category to the table's category of the same name."),
        "class_order": K([], "Final class names in label order (label = position + 1); set the same list for two datasets to share one taxonomy; empty = table order.", type=str),
        "recompute_boxes": K(False, "Replace every box by the whole-pixel box of its mask (fixes ModaNet's boxes that disagree with their polygons); off by default since it decodes every mask at load time."),
        "drop_duplicates": K(True, "COCO files: drop exact duplicate annotations (same class and the same mask or box in one image, e.g. ModaNet shoe pairs that carry the identical two-shoe polygon) with a count; a duplicate ground truth counts as a miss in evaluation."),
        "clip_boxes": K(True, "Clip boxes that stick out of the image to the image (boxes wholly outside are reported and dropped); on, since such boxes only add loss outside the picture."),
        "attributes": K("", "Attribute table for model.num_attributes: 'file' = the dataset's own list (a Fashionpedia-style COCO file's top-level attributes, iMaterialist's label_descriptions.json), or a table file or built-in name under data/categories/ (YAML or JSON with a top-level attributes list of {id, name, supercategory}, e.g. 'synthetic_attributes'); '' = no attributes.", type=str),
        "attribute_supercategories": K([], "Keep only the attributes of these supercategories (e.g. ['textile pattern']); empty = all.", type=str),
        "drop_attributes": K([], "Attributes (names or source ids) left out of the table, as drop_categories leaves out classes; none by default.", type=object),
        "allow_outside_images": K(False, "Accept annotation file names that resolve outside the images folder (absolute paths, '../../etc/hostname'); refused by default, naming the file, so that an annotation file cannot make training read arbitrary files."),
        "strict": K(False, "True: the first bad image or annotation raises an error naming it; False: it is skipped with one warning naming it, and the count is reported."),
        # Training augmentations (maskrcnn/data/transforms.py): each has a probability and a range; the geometric
        # ones move boxes and masks with the image. The defaults reproduce the standard Mask R-CNN recipe
        # (torchvision, detectron2 1x): horizontal flips only; the others are opt-in per dataset config.
        "augment": {
            "min_visible_fraction": K(0.25, "Crops, zoom-ins and affine maps drop an instance keeping less than this fraction of its mask area; under a quarter, a garment is rarely recognisable."),
            "hflip": {
                "prob": K(0.5, "Probability of a left-right mirror; clothes are nearly mirror-symmetric, and every recipe flips half the images."),
            },
            "vflip": {
                "prob": K(0.0, "Probability of a top-bottom mirror; off, since upside-down people do not occur in fashion photos."),
            },
            "scale_jitter": {
                "prob": K(0.0, "Probability of a zoom that keeps the canvas size (zoom in = crop and enlarge, zoom out = shrink and pad with black); off in the 1x recipe."),
                "min_scale": K(0.5, "Smallest zoom factor (0.5 halves every object), drawn uniformly between min_scale and max_scale."),
                "max_scale": K(1.5, "Largest zoom factor; the range 0.5-1.5 teaches scale invariance without making garments unrecognisably small."),
            },
            "crop": {
                "prob": K(0.0, "Probability of a random crop (the model then resizes the crop, so it also zooms in); off in the 1x recipe."),
                "min_fraction": K(0.6, "Each side of the crop is a uniform fraction in [min_fraction, 1] of the image's side; 0.6 keeps most of a person in view."),
            },
            "affine": {
                "prob": K(0.0, "Probability of a random affine map about the image centre; boxes are recomputed from the warped masks. Off in the 1x recipe."),
                "degrees": K(10.0, "Rotation drawn uniformly in [-degrees, degrees]; photos are mostly upright, so small angles."),
                "scale": K([0.9, 1.1], "Scale factor range [low, high] of the affine map."),
                "translate": K(0.1, "Shift drawn uniformly in [-translate, translate] times the image width (x) and height (y)."),
                "shear": K(5.0, "Horizontal shear angle drawn uniformly in [-shear, shear] degrees."),
            },
            "color": {
                "prob": K(0.0, "Probability of colour jitter (brightness, then contrast, then saturation); off in the 1x recipe."),
                "brightness": K(0.2, "Brightness factor drawn in [1 - v, 1 + v]; 0.2 covers typical exposure differences."),
                "contrast": K(0.2, "Contrast factor in [1 - v, 1 + v] (blend with the mean grey)."),
                "saturation": K(0.2, "Saturation factor in [1 - v, 1 + v] (blend with the greyscale image); small, since colour is part of a garment's look."),
            },
            "blur": {
                "prob": K(0.0, "Probability of a Gaussian blur (out-of-focus or low-resolution photos); off in the 1x recipe."),
                "sigma": K([0.1, 1.5], "Blur standard deviation range [low, high] in pixels; 1.5 softens edges without erasing the silhouette."),
            },
            "noise": {
                "prob": K(0.0, "Probability of additive Gaussian pixel noise (sensor noise of phone photos); off in the 1x recipe."),
                "std": K([0.0, 0.03], "Noise standard deviation range [low, high] in [0, 1] intensity units; 0.03 is visible grain."),
            },
        },
    },
    # Batching (maskrcnn/data/collate.py, maskrcnn/data/samplers.py).
    "dataloader": {
        "num_workers": K(2, "Worker processes decoding and augmenting images per training process; 0 decodes in the main process (easiest to debug)."),
        "aspect_ratio_grouping": K(True, "Batch landscape and portrait images separately, so padding to a common size wastes fewer pixels (as torchvision and detectron2)."),
        "drop_last": K(False, "False: pad each epoch by repeating a few images so every rank gets the same number of full batches; True: leave up to world_size*batch-1 images out instead (ranks strictly disjoint)."),
        "pin_memory": K(True, "Page-locked batches for faster host-to-GPU copies; only used when training on CUDA."),
        "repeat_factor_threshold": K(0.0, "Class-balanced sampling (LVIS repeat factors): an image is shown max(1, sqrt(t / f)) times per epoch on average, f = the image fraction of its rarest class; 0 = off (every image once, as the standard recipes); try 0.1-0.3 for imbalanced fashion data (docs/tuning.md)."),
    },
    "solver": {
        "ims_per_batch": K(16, "Global batch: images per iteration summed over all processes (detectron2 1x)."),
        "base_lr": K(0.02, "SGD learning rate for ims_per_batch=16 (linear scaling rule of Goyal et al.)."),
        "momentum": K(0.9, "SGD momentum, the value every Mask R-CNN recipe uses."),
        "weight_decay": K(1e-4, "L2 weight decay of the 1x recipe."),
        "max_iter": K(90000, "Training length in iterations (the COCO 1x schedule at batch 16)."),
        "lr_schedule": K("multistep", "'multistep' (times gamma at each of steps) or 'cosine' (to 0 at max_iter); the 1x recipe steps."),
        "steps": K([60000, 80000], "Iterations where 'multistep' multiplies the rate by gamma (1x: at 2/3 and 8/9 of 90k).", type=int),
        "gamma": K(0.1, "Factor applied at each of solver.steps; 0.1 in every Mask R-CNN recipe."),
        "warmup_iters": K(1000, "Linear warm-up length at the start of the run (Goyal et al.; torchvision and detectron2 use 1000)."),
        "warmup_factor": K(0.001, "Rate multiplier at iteration 0 of the warm-up, rising linearly to 1 (torchvision's 1/1000)."),
        "weight_decay_norm": K(None, "Weight decay of normalization-layer parameters; null = solver.weight_decay (torchvision's reference; detectron2 uses 0).", type=float),
        "weight_decay_bias": K(None, "Weight decay of biases; null = solver.weight_decay (as torchvision and detectron2).", type=float),
        "clip_grad_norm": K(0.0, "Clip the global gradient L2 norm to this; 0 = off (the standard recipes do not clip)."),
        "checkpoint_period": K(5000, "Save the training state every this many iterations (and at the end); 0 = only at the end."),
        "stage": K("all", "Training-stage preset when solver.stages is empty: heads, 5+, 4+, 3+ or all (see maskrcnn/engine/stages.py)."),
        "stages": K([], "Chained stages, each {name, iters, base_lr} (e.g. heads at 1e-3, then all at 1e-4); empty = one stage, solver.stage.", type=dict),
    },
    "eval": {
        "period": K(10000, "Evaluate on the validation set every this many iterations (and at the end); 0 = only at the end."),
        "iou_types": K(["bbox", "segm"], "COCO metrics to compute: 'bbox' (box AP) and/or 'segm' (mask AP)."),
        "mask_threshold": K(0.5, "Mask probabilities above this are foreground when scoring (torchvision and detectron2 use 0.5)."),
        "confusion_iou_thresh": K(0.5, "IoU at which a detection matches a ground-truth object in the confusion matrix (the AP50 criterion)."),
        "confusion_score_thresh": K(0.5, "Detections below this score are left out of the confusion matrix (a typical operating point)."),
        "pictures": K(True, "Also draw the confusion matrix and precision-recall curves as PNG (numbers are always written)."),
    },
    "train": {
        "log_period": K(20, "Print the progress line and write a metrics.jsonl record every this many iterations (detectron2's 20)."),
        "amp": K("off", "Mixed precision on CUDA: 'off' (float32), 'bf16' (bfloat16 autocast) or 'fp16' (float16 autocast with a gradient scaler); ignored on CPU. Either way box geometry, scores and losses stay float32. Choose bf16 on GPUs that have it (Ampere and newer: A100, RTX 30xx/40xx, H100): float32's range, so no loss scaling and no overflow. Choose fp16 on older GPUs (V100, T4, RTX 20xx), where bf16 is emulated and slow: 3 more mantissa bits, but a range of only 6e-5..65504, hence the GradScaler. Off so results match float32 references."),
        "find_unused_parameters": K(False, "DDP's find_unused_parameters; False is cheaper and suffices, since the losses of images without objects stay connected to every head."),
        "dist_timeout_minutes": K(30.0, "A collective call waiting longer than this for a missing process fails instead of hanging forever (torch's default, 30)."),
        "tensorboard": K(True, "Also write TensorBoard event files when the optional tensorboard package is installed."),
        "overlays": K(16, "Validation images drawn with their predictions at the final evaluation (overlays/*.png); -1 = all, 0 = none."),
        "overlay_score_thresh": K(0.5, "Detections scoring below this are left off the overlay pictures (the confusion matrix's operating point)."),
    },
    # Inference (infer.py, maskrcnn.Predictor; maskrcnn/inference/). Command-line options override these.
    "infer": {
        "score_thresh": K(0.5, "Detections scoring below this are left out of every output; 0.5 suits pictures and auto-annotation (use 0.05 for a COCO results file scored by AP, which rewards low-score detections)."),
        "max_detections": K(100, "Most detections kept per image, best first, after the score and class filters; COCO's 100 is far above the 1-20 items of a fashion photo (replaces model.roi_heads.detections_per_img)."),
        "classes": K([], "Class names to keep, e.g. [dress, bag]; empty = every class of the checkpoint.", type=str),
        "attribute_thresh": K(0.5, "Attributes scoring below this are left out of each item's attributes list (JSON, overlays) and of the COCO results' attribute_ids; the evaluation's attribute AP uses every score."),
        "mask_threshold": K(0.5, "Mask probabilities above this are foreground in the written masks (RLE, overlays, crops); 0.5 as in training and evaluation."),
        "batch_size": K(1, "Images per forward pass; 1 keeps each image's result independent of its batch-mates (padding to a common size changes the anchors the RPN ranks). Raise it on a GPU for throughput."),
        "num_workers": K(2, "Processes decoding images in the background while the model runs; 0 decodes in the main process."),
        "max_decoded_side": K(4096, "Images whose longer side exceeds this are first shrunk by the smallest integer factor (box average) that brings it within; boxes and masks still come in original pixels. The model resizes to input.max_size anyway, so this only bounds memory for huge photos."),
        "max_image_pixels": K(178956970, "Images with more pixels are reported and skipped (Pillow's decompression-bomb guard; this is the size at which Pillow itself refuses, twice its warning level); 0 = no limit."),
        "overlay_max_side": K(2048, "Overlay pictures of larger images are scaled down to this longer side; 0 = full size."),
    },
}
