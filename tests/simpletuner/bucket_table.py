"""Prints SimpleTuner 4.10.1's bucket of many image sizes as JSON ([mode, resolution, width,
height, bucket]), from its own MultiaspectImage functions with the SDXL alignment (64 px).
shardprep's page unit-tests against the table this wrote
(crates/coordinator/src/page/simpletuner_buckets.json):

    .venv-simpletuner/bin/python tests/simpletuner/bucket_table.py > crates/coordinator/src/page/simpletuner_buckets.json

"error": SimpleTuner's size calculation raises (an aspect that rounds to 0.0).
"""
import tempfile
import random, types, json, sys
from simpletuner.helpers.training.state_tracker import StateTracker
from simpletuner.helpers.multiaspect.image import MultiaspectImage as M
StateTracker.set_args(types.SimpleNamespace(aspect_bucket_alignment=64, aspect_bucket_rounding=None, output_dir=tempfile.mkdtemp()))
random.seed(29)
sizes = [(1024,1024),(1792,1024),(1024,1792),(1920,1088),(1216,832),(9,8),(900,800),(4000,300),(300,4000),(1,1),(3,1000)]
sizes += [(random.randint(1,5000), random.randint(1,5000)) for _ in range(200)]
out=[]
for mode, res in (("area",1.0),("area",0.5),("pixel",1024)):
    for w,h in sizes:
        ar = M.calculate_image_aspect_ratio((w,h))
        try:
            if mode=="area":
                t, i, a = M.calculate_new_size_by_pixel_area(float(ar), res, (w,h))
            else:
                t, i, a = M.calculate_new_size_by_pixel_edge(float(ar), res, (w,h))
            key = str(M.calculate_image_aspect_ratio(t))
        except ZeroDivisionError:
            key = "error"
        out.append([mode,res,w,h,key])
json.dump(out, sys.stdout)
