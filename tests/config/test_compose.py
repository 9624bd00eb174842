"""solo_mixmask.config.compose: config location, hydra's override grammar, sweeps."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from solo_mixmask.config import compose
from solo_mixmask.errors import ConfigError


def test_configs_root_holds_the_shipped_configs() -> None:
    root = compose.configs_root()
    assert (root / "pretrain" / "fashion_mnist" / "mixmask.yaml").is_file()
    assert (root / "linear" / "small.yaml").is_file()


def test_expand_sweeps_is_the_cartesian_product_in_hydra_order() -> None:
    jobs = compose.expand_sweeps(["method=mocov2plus,mixmask", "seed=1,2", "max_epochs=3"])
    assert jobs == [
        ["method=mocov2plus", "seed=1", "max_epochs=3"],
        ["method=mocov2plus", "seed=2", "max_epochs=3"],
        ["method=mixmask", "seed=1", "max_epochs=3"],
        ["method=mixmask", "seed=2", "max_epochs=3"],
    ]
    assert compose.expand_sweeps(["seed=1"]) == [["seed=1"]]
    assert compose.expand_sweeps([]) == [[]]


def test_a_sweep_without_multirun_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"seed='1,2'.*use -m"):
        compose.compose_config(None, "mixmask", ["seed=1,2"])


def test_apply_overrides_reads_values_as_hydra_does() -> None:
    cfg = OmegaConf.create({"a": {"b": 1}, "flag": True})
    out = compose.apply_overrides(cfg, ["a.b=2", "+a.c=[1,2]", "flag=no", "~a.b", "d.e=x"])
    assert "b" not in out.a  # ~key deletes the key, as hydra does
    assert list(out.a.c) == [1, 2]
    assert out.flag == "no"  # a string: the boolean check refuses it, it is never True
    assert out.d.e == "x"
    assert cfg.a.b == 1  # the input is not changed


def test_a_deleted_key_takes_the_engine_default() -> None:
    """``~key`` deletes the key (hydra's grammar): the engine's default applies. It set null,
    which for these keys means every image: all validation images and the whole 60,000-image
    training set as k-NN memory instead of the default 10,000."""
    from solo_mixmask.config.schema import BASE_DEFAULTS
    from solo_mixmask.run.pretrain import prepare_config

    cfg = compose.compose_config(None, "mixmask", ["~data.val_subset", "~data.knn_train_subset"])
    assert "val_subset" not in cfg.data and "knn_train_subset" not in cfg.data
    assert cfg.data.dataset == "fashion_mnist"  # the rest of the section stays
    _, filled = prepare_config(cfg)
    assert filled.data.knn_train_subset == BASE_DEFAULTS["data"]["knn_train_subset"] == 10000
    assert filled.data.val_subset == BASE_DEFAULTS["data"]["val_subset"]


def test_deletion_follows_hydra() -> None:
    cfg = OmegaConf.create({"a": {"b": 1, "n": None, "l": [1, 2], "d": {"x": 1}}, "c": 3})
    assert "b" not in compose.apply_overrides(cfg, ["~a.b=1"]).a  # the value it holds: deleted
    assert "d" not in compose.apply_overrides(cfg, ["~a.d={x:1}"]).a
    assert "c" not in compose.apply_overrides(cfg, ["~c=null"])  # null: whatever the value
    assert "n" not in compose.apply_overrides(cfg, ["~a.n"]).a  # a null key is in the config
    # overrides apply in order
    assert "b" not in compose.apply_overrides(cfg, ["a.b=5", "~a.b"]).a
    assert compose.apply_overrides(cfg, ["~a.b", "a.b=7"]).a.b == 7
    assert cfg.a.b == 1 and "c" in cfg  # the input is not changed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("~a.b=2", r"^a\.b='~a\.b=2' is not allowed: expected .*a\.b is 1, not 2"),
        ("~a.zz", r"^a\.zz='~a\.zz' is not allowed: expected a key of the config to delete"),
        ("~zz.b", r"^zz\.b='~zz\.b' is not allowed: expected a key of the config to delete"),
        ("~a.l.0", r"^a\.l\.0='~a\.l\.0' is not allowed: .*list"),
    ],
)
def test_a_deletion_hydra_refuses_is_a_config_error_naming_the_override(override, message):
    cfg = OmegaConf.create({"a": {"b": 1, "l": [1, 2]}})
    with pytest.raises(ConfigError, match=message) as err:
        compose.apply_overrides(cfg, [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["=3"], "malformed"), (["data.dataset"], "key=value"), (["a=[1,"], "key=value")],
)
def test_malformed_overrides_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose.parse_overrides(overrides)


def test_config_groups_lists_each_group_and_its_options() -> None:
    folder, name = compose.config_folder(None, "cifar/mocov2plus")
    assert name == "mocov2plus" and folder.name == "cifar"
    groups = compose.config_groups(folder)
    assert groups["augmentations"] == ["asymmetric", "aug_plus"]


def test_a_config_whose_defaults_hydra_cannot_find_is_named_not_the_overrides(tmp_path) -> None:
    folder = tmp_path / "my_configs"
    (folder / "augmentations").mkdir(parents=True)
    (folder / "augmentations" / "plain.yaml").write_text("- crop_size: 28\n")
    (folder / "my_run.yaml").write_text("defaults:\n  - wandb: none\n  - _self_\nmethod: mixmask\n")
    for overrides in ([], ["augmentations=plain"]):
        with pytest.raises(ConfigError) as err:
            compose.compose_config(str(folder), "my_run.yaml", overrides)
        assert err.value.key == "--config-name", overrides
        assert "wandb/none" in str(err.value) and "overrides=" not in str(err.value)
        assert "\n" not in str(err.value)  # one line, without hydra's search path
    (folder / "ok.yaml").write_text("defaults:\n  - _self_\nmethod: mixmask\n")
    with pytest.raises(ConfigError) as err:  # the config composes: the override is at fault
        compose.compose_config(str(folder), "ok.yaml", ["augmentations=nothere"])
    assert err.value.key == "overrides"


def _copy_of_shipped_config(folder, name: str, edit) -> str:
    """Copy configs/pretrain/fashion_mnist (the config and its groups) into ``folder``, with
    ``edit`` applied to the text of mixmask.yaml saved as ``name``.yaml; ``--config-path``."""
    import shutil

    shutil.copytree(compose.configs_root() / "pretrain" / "fashion_mnist", folder)
    (folder / f"{name}.yaml").write_text(edit((folder / "mixmask.yaml").read_text()))
    return str(folder)


@pytest.mark.parametrize(
    ("old", "new", "key", "text"),
    [
        ("seed: 5", "seed: 0042", "seed", "0042"),  # octal: it printed seed: 34
        ("val_subset: 2000", "val_subset: 02000", "data.val_subset", "02000"),
        ("max_epochs: 2", "max_epochs: 1:00", "max_epochs", "1:00"),  # base 60: 60
    ],
)
def test_a_config_file_integer_yaml_reads_as_another_number_is_refused(
    tmp_path, capsys, old, new, key, text
) -> None:
    from tests.cli_helpers import cli_error_line

    folder = _copy_of_shipped_config(tmp_path / "cfg", "mine", lambda t: t.replace(old, new))
    args = ["pretrain", "--cfg", "job", "--config-path", folder, "--config-name", "mine"]
    line = cli_error_line(capsys, tmp_path / "runs", args)
    assert line.startswith(f"error: {key}='{text}' is not allowed: expected a decimal number"), line
    assert "mine.yaml" in line, line


def test_a_group_file_integer_yaml_reads_as_another_number_is_refused(tmp_path) -> None:
    folder = _copy_of_shipped_config(tmp_path / "cfg", "mine", lambda t: t)
    aug = tmp_path / "cfg" / "augmentations" / "aug_plus.yaml"
    aug.write_text(aug.read_text().replace("crop_size: 28", "crop_size: 034"))  # octal 28
    with pytest.raises(ConfigError, match=r"^augmentations\.0\.crop_size='034'.*aug_plus\.yaml"):
        compose.compose_config(folder, "mine", [])
    compose.compose_config(folder, "mine", ["augmentations=asymmetric"])  # not read: composes


def test_quoted_text_floats_and_plain_integers_in_a_config_file_stay_accepted(tmp_path) -> None:
    def edit(text: str) -> str:
        text = text.replace("lr: 0.06", "lr: 1e-3").replace("seed: 5", "seed: 0")
        return text.replace("weight_decay: 0.0001", "weight_decay: 0.5") + 'note: "0042"\n'

    folder = _copy_of_shipped_config(tmp_path / "cfg", "mine", edit)
    cfg = compose.compose_config(folder, "mine", [])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.5
    assert cfg.note == "0042" and cfg.seed == 0


@pytest.mark.parametrize("group", ["augmentations", "wandb"])
def test_a_group_key_set_in_the_file_and_chosen_after_self_is_refused(
    tmp_path, capsys, group
) -> None:
    """The shipped configs list ``_self_`` first: a copy that also sets ``augmentations:`` in
    its body lost it to aug_plus.yaml (crop_size 28 instead of 16), with exit 0."""
    from tests.cli_helpers import cli_error_line

    body = {"augmentations": "augmentations:\n  - crop_size: 16\n    num_crops: 2\n"}
    body["wandb"] = "wandb:\n  enabled: false\n  project: mine\n"
    folder = _copy_of_shipped_config(tmp_path / "cfg", "mine", lambda t: t + body[group])
    args = ["pretrain", "--cfg", "job", "--config-path", folder, "--config-name", "mine"]
    line = cli_error_line(capsys, tmp_path / "runs", args)
    assert line.startswith(f"error: {group}="), line
    assert "after _self_" in line and "mine.yaml" in line, line
    # with the group entry removed by an override, the file's value is the one used
    cfg = compose.compose_config(folder, "mine", [f"~{group}"])
    assert cfg[group] == OmegaConf.create(body[group])[group]


def test_every_shipped_pretraining_config_composes() -> None:
    for path in sorted((compose.configs_root() / "pretrain").glob("*/*.yaml")):
        compose.compose_config(str(path.parent), path.stem, [])
