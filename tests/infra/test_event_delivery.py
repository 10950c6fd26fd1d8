"""What the deployed Event Grid delivery needs from the templates, checked against the code that relies on it:
the dead-letter container status reads (and the local Event Grid writes), created with the other containers and
writable by the system topic's own identity, and the staging prefix the task-finished subscription filters on."""

from typing import Any

import pytest

from local.eventgrid.deadletter import DEAD_LETTER_CONTAINER as LOCAL_DEAD_LETTERS
from shared.settings import Settings
from shared.status import EVENT_DEAD_LETTER_CONTAINER
from tests.infra.bicep_model import Expr, load, template_sources

MAIN = "infra/main.bicep"
EVENTGRID = "infra/app/eventgrid.bicep"


def check_delivery(sources: dict[str, str]) -> None:
    files = load({path: s for path, s in sources.items() if path.endswith(".bicep")})
    main, eventgrid = files[MAIN], files[EVENTGRID]
    dead = main.get("var", "deadLetterContainer").value
    assert dead == EVENT_DEAD_LETTER_CONTAINER == LOCAL_DEAD_LETTERS, "one dead-letter container everywhere"
    (storage,) = [m for m in main.of("module") if m.type_text == "app/storage.bicep"]
    containers = storage.value["params"]["containers"]
    assert isinstance(containers, list) and Expr("deadLetterContainer", main.root) in containers, (
        "the dead-letter container is created with the others"
    )
    staging = main.get("var", "stagingPrefix").value
    assert staging == Settings.model_fields["staging_prefix"].default, "the staging prefix is the app's default"
    outputs = {o.name: o.value for o in main.of("output")}
    assert outputs["BATCHDROP_EVENT_DEADLETTER_CONTAINER"] == Expr("deadLetterContainer", main.root)
    assert outputs["BATCHDROP_STAGING_PREFIX"] == Expr("stagingPrefix", main.root)
    (topic,) = eventgrid.resources("Microsoft.EventGrid/systemTopics")
    identity: Any = topic.value.get("identity")
    assert identity == {"type": "SystemAssigned"}, "the topic dead-letters with its own identity"


def test_the_templates_deliver_as_the_code_expects() -> None:
    check_delivery(template_sources())


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        (MAIN, "var deadLetterContainer = 'eventgrid-deadletter'", "var deadLetterContainer = 'deadletters'"),
        (MAIN, "resultsContainer, deadLetterContainer, deploymentContainer", "resultsContainer, deploymentContainer"),
        (MAIN, "var stagingPrefix = 'staging'", "var stagingPrefix = 'stage'"),
        (EVENTGRID, "    type: 'SystemAssigned'\n", "    type: 'None'\n"),
    ],
)
def test_each_delivery_check_fails_on_a_broken_template(file: str, old: str, new: str) -> None:
    sources = template_sources()
    assert sources[file].count(old) == 1, f"anchor must occur once in {file}: {old!r}"
    sources[file] = sources[file].replace(old, new)
    with pytest.raises(AssertionError):
        check_delivery(sources)
