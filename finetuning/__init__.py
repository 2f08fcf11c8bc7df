"""Adapting the retriever to a herbarium: fine-tune the image-text encoder on the collection's own sheets.

Each specimen image is paired with texts of its taxon (name templates, organ sentences and
trait phrases of its linked flora descriptions), batches mix near taxa, and a taxon is never
its own negative. `objective="multitask"` trains retrieval and the trait decoder together
with momentum encoders and a feature queue. The result is a `local-dir:` open_clip
checkpoint with a model card, which `herbaria index --model local-dir:...` and the captioner
load like any other encoder. This package sits above retrieval/ and captioning/ and nothing
imports it but the command line.

    from finetuning import finetune
    report = finetune("collections/harvard", model="bioclip", objective="contrastive")
"""

from finetuning.train import finetune

__all__ = ["finetune"]
