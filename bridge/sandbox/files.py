"""Real files for the sandbox exporters to hand out: PDF, DOCX, zipped HTML, Markdown.

The files are small but genuine (a PDF reader opens the PDF, Word opens the DOCX), so an
end-to-end test can check what it downloaded, not just that bytes arrived.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from xml.sax.saxutils import escape

CONTENT_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "html": "application/zip",
    "markdown": "text/markdown; charset=utf-8",
}
EXTENSIONS = {"pdf": "pdf", "docx": "docx", "html": "zip", "markdown": "md"}

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class GeneratedFile:
    """A file the sandbox serves: its leading bytes, and how far to pad it."""

    head: bytes
    size: int
    content_type: str
    extension: str

    def chunks(self) -> Iterator[bytes]:
        """Yield the file in chunks; padding is generated, never held in memory."""
        yield self.head
        remaining = self.size - len(self.head)
        filler = b"%" + b"x" * (_CHUNK - 2) + b"\n"
        while remaining > 0:
            piece = filler[: min(_CHUNK, remaining)]
            remaining -= len(piece)
            yield piece

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


def make_file(fmt: str, title: str, body: str, pad_to: int | None = None) -> GeneratedFile:
    """Build a file of format *fmt* (pdf, docx, html, markdown).

    *pad_to* grows a PDF to that many bytes with comment lines after ``%%EOF`` (still a
    valid PDF); other formats ignore it.
    """
    if fmt == "pdf":
        head = make_pdf(title, body)
    elif fmt == "docx":
        head = make_docx(title, body)
    elif fmt == "html":
        head = make_html_zip(title, body)
    elif fmt == "markdown":
        head = f"# {title}\n\n{body}\n".encode()
    else:
        raise ValueError(f"unknown format {fmt!r}")
    size = max(len(head), pad_to or 0) if fmt == "pdf" else len(head)
    return GeneratedFile(head, size, CONTENT_TYPES[fmt], EXTENSIONS[fmt])


def make_pdf(title: str, body: str) -> bytes:
    """A one-page PDF 1.4 with the title and body as Helvetica text, with a correct xref."""

    def pdf_text(value: str) -> str:
        ascii_text = value.encode("latin-1", "replace").decode("latin-1")
        return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    stream = (
        f"BT /F1 18 Tf 72 740 Td ({pdf_text(title)}) Tj ET\n"
        f"BT /F1 11 Tf 72 710 Td ({pdf_text(body)}) Tj ET\n"
    ).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"endstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def make_docx(title: str, body: str) -> bytes:
    """A minimal Office Open XML word-processing document."""
    paragraphs = "".join(
        f'<w:p><w:r><w:t xml:space="preserve">{escape(text)}</w:t></w:r></w:p>'
        for text in (title, body)
    )
    files = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
            "</Types>"
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/officeDocument" Target="word/document.xml"/>'
            "</Relationships>"
        ),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{paragraphs}</w:body></w:document>"
        ),
    }
    return _zip(files)


def make_html_zip(title: str, body: str) -> bytes:
    """A zip holding ``index.html`` and a stylesheet, as Scroll HTML Exporter returns."""
    html = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><link rel='stylesheet' href='css/site.css'></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(body)}</p></body></html>"
    )
    return _zip({"index.html": html, "css/site.css": "body { font-family: sans-serif; }"})


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            # A fixed timestamp keeps the sandbox's output byte-for-byte reproducible.
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)
    return buffer.getvalue()
