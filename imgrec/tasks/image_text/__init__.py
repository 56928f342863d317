"""The image-text task (two towers: SigLIP / CLIP): contrastive losses (losses.py) and zero-shot
classification (zeroshot.py). Not yet a registered task: its contract module comes with the task contract v2."""
