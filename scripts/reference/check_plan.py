import sys, random, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _vision_draft import ImageProcessing, plan_image
from PIL import Image
from transformers import AutoProcessor
proc = AutoProcessor.from_pretrained(sys.argv[1])
ip = proc.image_processor
rng = random.Random(0)
settings = [dict(), dict(min_image_tokens=64, max_image_tokens=128), dict(min_image_tokens=32, max_image_tokens=256),
            dict(use_thumbnail=False), dict(max_pixels_tolerance=1.5), dict(min_image_tokens=16, max_image_tokens=64, do_image_splitting=False)]
bad = 0; n = 0; t0 = time.time()
for s in settings:
    p = ImageProcessing(**s)
    for _ in range(70):
        kind = rng.random()
        if kind < 0.4: w, h = rng.randint(1, 900), rng.randint(1, 900)
        elif kind < 0.8: w, h = rng.randint(500, 2600), rng.randint(300, 2000)
        else:
            w, h = rng.randint(1, 60), rng.randint(500, 4000)
            if rng.random() < .5: w, h = h, w
        img = Image.new("RGB", (w, h), (1, 2, 3))
        feats = ip(images=[[img]], return_row_col_info=True, **s)
        text = proc.replace_image_token(feats, image_idx=0, use_image_special_tokens=True, **s)
        plan = plan_image(w, h, p)
        ok = plan.text() == text
        n += 1
        if not ok:
            bad += 1; print("MISMATCH", s, w, h, plan.grid, len(text), len(plan.text()))
        # pixel tensor shapes too: pieces sizes vs spatial shapes
        shapes = [tuple(x) for x in feats["spatial_shapes"].tolist()]
        mine = [(pc.height // 16, pc.width // 16) for pc in plan.pieces]
        if shapes != mine:
            bad += 1; print("SHAPES", s, w, h, shapes[:3], mine[:3])
print("checked", n, "bad", bad, "%.0fs" % (time.time() - t0))
