"""The services file format shared by every part: shape errors name the entry; values pass through."""

from __future__ import annotations

from pathlib import Path

import pytest

from kapa.core.services import ServiceKey, ServicesFileError, load_services, parse_services


def test_full_entry_and_defaults() -> None:
    entries = parse_services(
        {
            "services": [
                {
                    "name": "hello",
                    "annotations": {"autoscaling.knative.dev/target": 10},
                    "hosts": ["hello.localhost"],
                    "pathPrefix": "/hello",
                    "local": {"port": 8080},
                },
                {"name": "other", "namespace": "team-a"},
            ]
        }
    )
    hello, other = entries
    assert hello.spec.key == ServiceKey("default", "hello")
    assert hello.spec.annotations["autoscaling.knative.dev/target"] == "10"
    assert hello.hosts[-1] == "hello.localhost" and "hello.default" in hello.hosts
    assert hello.path_prefix == "/hello" and hello.local == {"port": 8080}
    assert other.spec.key == ServiceKey("team-a", "other") and other.path_prefix is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping with a 'services' list"),
        ({"services": [{"namespace": "x"}]}, "services[0]: each service needs a 'name'"),
        ({"services": [{"name": "a"}, {"name": "a"}]}, "services[1]: service default/a is listed twice"),
        ({"services": [{"name": "a", "hosts": "h"}]}, "'hosts' a list"),
        ({"services": [{"name": "a", "pathPrefix": "x"}]}, "'pathPrefix' must start with '/'"),
        ({"services": [{"name": "a", "anotations": {}}]}, "services[0]: unknown key 'anotations'; did you mean 'annotations'?"),
        ({"services": [{"name": "a", "replicas": 3}]}, "unknown key 'replicas'; expected one of name, namespace"),
        ({"services": [], "service": []}, "unknown key 'service'; did you mean 'services'?"),
    ],
)
def test_shape_errors_name_the_entry(document: object, message: str) -> None:
    with pytest.raises(ServicesFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_services(document)


def test_load_services_reports_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services: [unclosed")
    with pytest.raises(ServicesFileError, match=str(path)):
        load_services(path)


@pytest.mark.parametrize(("text", "key"), [("ns/svc", ServiceKey("ns", "svc")), ("svc", ServiceKey("default", "svc"))])
def test_service_key_parse(text: str, key: ServiceKey) -> None:
    assert ServiceKey.parse(text) == key


@pytest.mark.parametrize("text", ["", "/", "ns/", "a/b/c"])
def test_service_key_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected NAMESPACE/NAME"):
        ServiceKey.parse(text)
