# The seed's extract-captions.py (docs: preset_dalle3.zh.md, "将图像字幕提取为文本文件"),
# copied verbatim except that tqdm is optional (it is not installed in the bench
# venv and a progress bar is not part of the work). Run with cwd = the dalle3/ folder.
import glob
import json, os
import pandas as pd
try:
    from tqdm import tqdm
except ImportError:
    def tqdm(iterable, **kwargs):
        return iterable

# Glob for all JSON files in the folder
json_files = glob.glob('data/*.json')

data = []
caption_field = 'short_caption'

# Process each JSON file
for file_path in tqdm(json_files, desc="Extracting text captions from JSON"):
    with open(file_path, 'r') as file:
        content = json.load(file)
        if "width" not in content:
                continue
        text_path = "data/" + os.path.splitext(content['image_name'])[0] + ".txt"
        # write content to text path
        with open(text_path, 'w') as text_file:
            text_file.write(content[caption_field])
