"""Shipping a trained model: HF folders (compact with custom code, or plain unrolled BERT), ONNX
(+ int8), model cards. Nothing here imports onnx/onnxruntime until an ONNX function is called
(they come with the optional ``[deploy]`` extra).
"""

from .card import render_model_card
from .folder import (
    RECORD_FILE,
    ExportError,
    clean_tokenizer_config,
    is_sps_config,
    load_model_folder,
    read_folder_record,
    set_label_names,
    update_card,
)
from .hf import CODE_FILES, export_compact, export_plain, plain_bert_config, unroll_student
from .onnx import OnnxLogits, export_onnx, onnx_logits, quantize_int8, verify_onnx

__all__ = [
    "CODE_FILES",
    "RECORD_FILE",
    "ExportError",
    "OnnxLogits",
    "clean_tokenizer_config",
    "export_compact",
    "export_onnx",
    "export_plain",
    "is_sps_config",
    "load_model_folder",
    "onnx_logits",
    "plain_bert_config",
    "quantize_int8",
    "read_folder_record",
    "render_model_card",
    "set_label_names",
    "unroll_student",
    "update_card",
    "verify_onnx",
]
