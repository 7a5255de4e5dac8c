"""Tiny clients written only from the vendors' documents (seeds/), as users' scripts are.

They know nothing about the bridge: pointing them at the bridge's proxy routes with a
bridge API key must just work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests


class ScrollScript:
    """The async flow of Scroll's "Export Content via REST API" page."""

    def __init__(self, base_url: str, auth: Any, servlet: str = "scroll-pdf") -> None:
        # e.g. <base-url>/plugins/servlet/scroll-office/api/public/1/
        self.prefix = f"{base_url}/{servlet}/api/public/1"
        self.session = requests.Session()
        if isinstance(auth, tuple):
            self.session.auth = auth  # HTTP Basic, as `curl -u admin:admin`
        else:
            self.session.headers["Authorization"] = f"Bearer {auth}"  # a PAT

    def export(
        self,
        page_id: str,
        template_id: str,
        target_dir: Path,
        resend_auth_on_download: bool = False,
    ) -> Path:
        response = self.session.post(
            f"{self.prefix}/exports",
            json={
                "pageId": page_id,
                "scope": "current",
                "templateId": template_id,
                "versionId": "string",
                "variantId": "string",
                "languageKey": "string",
            },
        )
        assert response.status_code == 200, response.text  # the docs' clients demand 200
        job_id = response.json()["jobId"]
        while True:  # "we recommend every two seconds"; faster here
            status = self.session.get(f"{self.prefix}/exports/{job_id}/status").json()
            if status["status"] != "incomplete":
                break
            time.sleep(0.1)
        assert status["status"] == "complete", status
        getter = self.session.get if resend_auth_on_download else requests.get
        with getter(status["downloadUrl"], stream=True) as download:
            download.raise_for_status()
            # --remote-name: the file name is the last path segment of the final URL
            name = unquote(urlsplit(download.url).path.rsplit("/", 1)[-1])
            target = target_dir / name
            with target.open("wb") as out:
                for chunk in download.iter_content(65536):
                    out.write(chunk)
        return target

    def cancel(self, job_id: str) -> int:
        return self.session.delete(f"{self.prefix}/exports/{job_id}").status_code

    def export_sync(self, page_id: str, template_id: str) -> requests.Response:
        return self.session.get(
            f"{self.prefix}/export-sync",
            params={"templateId": template_id, "pageId": page_id, "scope": "current"},
        )


class ContentExporterScript:
    """The "Use Remote API - Step by step" flow of the Content Exporter docs."""

    def __init__(self, application_url: str, api_key: str) -> None:
        self.url = application_url
        self.headers = {"CEX-API-KEY": api_key}

    def export(self, page_id: str, body: dict[str, Any]) -> requests.Response:
        init = requests.post(
            f"{self.url}/api/remoteExport/{page_id}/init",
            json={**body, "rootContentId": int(page_id)},
            headers=self.headers,
        )
        assert init.status_code == 200, init.text
        try:
            export_hash = init.json()["hash"]
        except (ValueError, KeyError, TypeError):
            export_hash = init.text.strip()
        while True:
            poll = requests.get(
                f"{self.url}/api/remoteExport/poll",
                params={"hash": export_hash},
                headers=self.headers,
            ).json()
            if poll["progressData"]["progressValue"] >= 100:
                break
            time.sleep(0.1)
        return requests.get(
            f"{self.url}/api/remoteExport/download",
            params={"hash": export_hash},
            headers=self.headers,
        )
