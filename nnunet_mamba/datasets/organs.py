"""One spelling for every structure, shared by the converters (label names in ``dataset.json``)
and the evaluation (protocol class lists, NSD tolerances)."""
from __future__ import annotations

SPLEEN = "spleen"
KIDNEY_RIGHT = "kidney_right"
KIDNEY_LEFT = "kidney_left"
GALLBLADDER = "gallbladder"
ESOPHAGUS = "esophagus"
LIVER = "liver"
STOMACH = "stomach"
AORTA = "aorta"
INFERIOR_VENA_CAVA = "inferior_vena_cava"
PORTAL_SPLENIC_VEIN = "portal_and_splenic_vein"
PANCREAS = "pancreas"
ADRENAL_GLAND_RIGHT = "adrenal_gland_right"
ADRENAL_GLAND_LEFT = "adrenal_gland_left"
DUODENUM = "duodenum"
BLADDER = "bladder"
PROSTATE_UTERUS = "prostate_uterus"
TUMOR = "tumor"
LESION = "lesion"

# NSD tolerances in mm, per structure: the values of the FLARE abdomen evaluation that the U-Mamba
# and Swin-UMamba abdomen scripts use (liver/pancreas/stomach 5, kidneys/spleen/esophagus 3,
# duodenum 7, vessels/adrenals/gallbladder 2). Structures they do not cover fall back to
# DEFAULT_NSD_TOLERANCE_MM.
NSD_TOLERANCE_MM: dict[str, float] = {
    LIVER: 5.0,
    KIDNEY_RIGHT: 3.0,
    KIDNEY_LEFT: 3.0,
    SPLEEN: 3.0,
    PANCREAS: 5.0,
    AORTA: 2.0,
    INFERIOR_VENA_CAVA: 2.0,
    ADRENAL_GLAND_RIGHT: 2.0,
    ADRENAL_GLAND_LEFT: 2.0,
    GALLBLADDER: 2.0,
    ESOPHAGUS: 3.0,
    STOMACH: 5.0,
    DUODENUM: 7.0,
}
DEFAULT_NSD_TOLERANCE_MM = 2.0
