"""A ClientApp's error text never carries file contents back to the server, and a client does not
open a test file the server names."""

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from zorba.federation.config import make_config
from zorba.flower import client_app, wire
from zorba.flower.settings import config_to_json


def hello_message(cfg) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    setup = ConfigRecord({"config": config_to_json(cfg), "faults": "", "torch-threads": 1})
    return Message(RecordDict({wire.SETUP: setup}), dst_node_id=0, message_type="query.hello")


def context() -> Context:
    return Context(run_id=1, node_id=0, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def test_error_text_does_not_quote_the_file_it_read(tmp_path, tiny_models):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("root:SECRET-HASH:0:0:root:/root:/bin/bash\n")
    (tmp_path / "sst2" / "dev.tsv").write_text("label\tsentence\n1\tfine\n")
    cfg = make_config(model=str(tiny_models["bert"]), clients=1, data_dir=str(tmp_path))
    with pytest.raises(client_app.ClientFailure) as exc:
        client_app.hello(hello_message(cfg), context())
    assert "SECRET" not in str(exc.value) and "UserError" in str(exc.value)


def test_a_client_ignores_the_test_file_the_server_names(tmp_path, tiny_models, data_dir):
    (tmp_path / "secret.tsv").write_text("root:SECRET-HASH:0:0\n")
    cfg = make_config(model=str(tiny_models["bert"]), clients=1, data_dir=str(data_dir), train_size=20,
                      test_file=str(tmp_path / "secret.tsv"))
    answer = client_app.hello(hello_message(cfg), context())
    assert answer.content[wire.SETUP]["partition-id"] == 0
