"""What the findings chapter says beside its verdicts: the verdict rules (from ``findings``' thresholds) and
the disclosures a reader of the paper's numbers and of ours should know (the authors' code, parameter counts)."""

from __future__ import annotations

from typing import Any, Mapping

from ..settings.profiles import ENCODER_LABELS
from .findings import LINEAR_MAX, MIN_SPEED_GAP_PERCENT, QUADRATIC_MIN, paper_runs, relative_change


def rules_text() -> list[str]:
    """The verdict rules as the findings chapter prints them (from this module's constants)."""
    return [
        "**supported**: our measurement reaches the paper's claim; **partly**: the same direction, smaller "
        "than claimed; **not supported**: no difference, or the opposite direction; **no verdict**: no "
        "edition has the conditions the claim needs (the reason names what is missing).",
        "Table 1 and the validation loss need runs with the paper's architectures, pretrained weights, a "
        "1,000-class ImageNet-like validation set, 224 px and the paper's number of epochs. A difference "
        "smaller than twice its binomial standard error over the validation images is no difference.",
        "Throughput needs the paper-size towers at 224 px on a GPU (random weights do not change speed). The "
        "verdict compares the image towers alone at the paper's conditions (its float32 mode, batch 32, "
        f"inference), each the median of repeated batches; a gap under {MIN_SPEED_GAP_PERCENT:.0f}% or inside "
        "the two measurements' 10th-90th percentile ranges is no difference. The paper's own method (the "
        "whole evaluation loop with JPEG decoding) is reported beside it.",
        f"Scaling: supported when MambaVision's time per image grows about linearly with the pixel count "
        f"(fitted exponent b <= {LINEAR_MAX}), ViT's about quadratically (b >= {QUADRATIC_MIN}) and MVLIP is "
        "faster than CLIP(ViT) at the largest resolution measured; partly when MambaVision's exponent is the "
        "lower one and one of the other two holds.",
    ]


def disclosures(ref: Mapping[str, Any], editions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a reader of the paper's numbers and of ours should know, from ``paper_tables.json`` and the
    runs' config.json: the authors' code, the pretrained CLIP(ViT) row, parameter counts, absolute gaps."""
    code, t1 = ref["authors_code"], ref["table1_final_epoch"]
    vit = t1["vit_pretrained_not_finetuned_fp16"]
    out = [f"The authors' released code optimised {code['optimised_parameters']}, and chose its \"best\" "
           f"checkpoint by {code['best_checkpoint_by']}; {code['curves_from']} come from that code. Our runs "
           "follow the paper (frozen text tower) and report the final epoch, so the paper's numbers and ours "
           "differ in protocol where a paper-profile run is compared with them.",
           f"Table 2's CLIP(ViT) row is {code['table2_vit_row']} ({vit['accuracy']:.2f} accuracy, weighted "
           f"P/R/F1 {vit['precision_weighted']:.2f}/{vit['recall_weighted']:.2f}/{vit['f1_weighted']:.2f}, "
           f"zero-shot loss {vit['val_zeroshot_loss']:.4f}), not the fine-tuned CLIP(ViT) that Table 1's protocol "
           f"would give; its throughput was measured as {code['table2_method']}."]
    gain = relative_change(t1["mambavision"]["accuracy"], t1["swin"]["accuracy"])
    out.append(f"The paper's \"{gain:+.2f}%\" accuracy gain is {(t1['mambavision']['accuracy'] - t1['swin']['accuracy']) * 100:.2f} "
               f"points ({t1['mambavision']['accuracy']:.4f} against {t1['swin']['accuracy']:.4f}); relative "
               "percentages of small numbers look larger than the absolute gap.")
    counts = ref["model_params_millions"]
    ours = {}
    for runs in editions.values():
        for encoder, run in paper_runs(runs).items():
            if run["config"].get("model_size") == "paper" and "parameters" in run["config"]:
                ours[encoder] = run["config"]["parameters"]["image_tower"]["total"] / 1e6
    if ours:
        pairs = [f"{ENCODER_LABELS[e]} {counts[e]:.1f} M in the paper, {ours[e]:.1f} M here" for e in counts
                 if e in ours and e != "note"]
        out.append("Parameter counts of the image towers with their 512-d projection: " + "; ".join(pairs) +
                   " (the paper's counts include its classifier head or another projection).")
    return out
