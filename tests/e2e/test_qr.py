"""The share page's QR encoder (appliance/static/qr.js, run in node) against
a reference encoder (python-qrcode), module for module."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_qr_encoder_matches_a_reference_encoder():
    qrcode = pytest.importorskip("qrcode")
    texts = ["http://192.168.1.20:8080/listen/main", "hi",
             "http://appliance.local/listen/translation-fr?token=abcdef0123456789", "ü" * 200]
    script = (
        "import {qrMatrix} from " + json.dumps(str(ROOT / "appliance/static/qr.js")) + ";"
        "const texts = JSON.parse(process.argv[1]); const out = [];"
        "for (const t of texts) for (let m = 0; m < 8; m++) out.push(qrMatrix(t, {mask: m}));"
        "out.push(qrMatrix(texts[0]));"  # automatic mask
        "process.stdout.write(JSON.stringify(out));")
    result = subprocess.run(["node", "--input-type=module", "-e", script, json.dumps(texts)],
                            capture_output=True, text=True, check=True, timeout=60)
    matrices = json.loads(result.stdout)
    for i, text in enumerate(texts):
        for mask in range(8):
            ours = matrices[i * 8 + mask]
            ref = qrcode.QRCode(version=(len(ours) - 17) // 4, border=0, mask_pattern=mask,
                                error_correction=qrcode.constants.ERROR_CORRECT_M)
            ref.add_data(qrcode.util.QRData(text.encode(), mode=qrcode.util.MODE_8BIT_BYTE),
                         optimize=0)
            ref.make(fit=False)
            assert ours == ref.get_matrix(), (text, mask)
    assert len(matrices[-1]) == 29  # version 3 for a typical share link
