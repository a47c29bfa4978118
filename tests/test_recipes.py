import pytest

from core.errors import ConfigError
from core.recipe import apply_overrides, list_recipes, load_recipe, recipe_dir
from curate.pipeline import CURATE_SCHEMA, resolve_recipe

SHIPPED = sorted(list_recipes("curate"))


def test_the_five_recipes_ship():
    assert {"balanced", "compbench", "commontext", "quality", "tiny"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_validates_and_documents_itself(name):
    resolved_name, data = resolve_recipe(name)
    assert resolved_name == name and data["description"]
    first_line = (recipe_dir("curate") / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# curate build --recipe"), "first comment line is the command that runs it"
    fractions = sum(q["fraction"] for q in data["quotas"].values())
    assert fractions == pytest.approx(1.0)


def test_unknown_top_level_key_names_the_key():
    with pytest.raises(ConfigError, match="no_such_key"):
        resolve_recipe("tiny", ["no_such_key=1"])


def test_unknown_step_key_names_the_key():
    with pytest.raises(ConfigError, match="steps.length.min_wordz"):
        resolve_recipe("tiny", ["steps.length.min_wordz=3"])


def test_overrides_are_typed_yaml_values():
    _, data = resolve_recipe("tiny", ["steps.length.min_words=4", "quotas.text.fraction=0.23", "seed=7"])
    assert data["steps"]["length"]["min_words"] == 4 and data["seed"] == 7


def test_exponent_numbers_without_a_dot_are_numbers_on_the_command_line():
    """YAML 1.1 reads 1e-3 as text; `--set optim.lr=1e-3` means the number (train uses the same parser)."""
    from train.config import resolve

    _, cfg = resolve("tiny", ["optim.lr=1e-3", "optim.eps=-2E-8"])
    assert cfg["optim"]["lr"] == 0.001 and cfg["optim"]["eps"] == -2e-8


def test_a_number_written_as_yaml_text_gets_a_hint(tmp_path):
    from train.config import resolve

    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: {path: tiny:flux}\noptim: {lr: 1e-3}\nstages: [{data: builtin:tiny, steps: 1}]\n")
    with pytest.raises(ConfigError, match=r"optim.lr must be int/float, got '1e-3' \(YAML reads 1e-3 as text"):
        resolve(str(recipe))


def test_a_step_can_be_disabled_with_null():
    _, data = resolve_recipe("tiny", ["steps.dedup_exact=null"])
    assert data["steps"]["dedup_exact"] is None


def test_wrong_type_is_an_error():
    _, data = load_recipe("tiny", "curate")
    with pytest.raises(ConfigError, match="size"):
        apply_overrides(data, ["size=many"], CURATE_SCHEMA)


def test_source_flag_replaces_a_pool(tmp_path):
    pool = tmp_path / "p.txt"
    pool.write_text("a sign that says 'hi'\n")
    _, data = resolve_recipe("tiny", sources=[f"text={pool}"])
    assert data["sources"]["text"] == [{"uri": str(pool)}]
    with pytest.raises(ConfigError, match="criterion"):
        resolve_recipe("tiny", sources=[f"nonsense={pool}"])


def test_overrides_index_into_lists():
    _, data = resolve_recipe("balanced", ["sources.quality.0.text_column=TEXT",
                                          "sources.quality.0.score_columns.aesthetic=AESTHETIC_SCORE"],
                             sources=["quality=captions.parquet"])
    assert data["sources"]["quality"][0]["text_column"] == "TEXT"
    assert data["sources"]["quality"][0]["score_columns"] == {"aesthetic": "AESTHETIC_SCORE"}
    with pytest.raises(ConfigError, match="sources.quality.5"):
        resolve_recipe("balanced", ["sources.quality.5.uri=x"])
    with pytest.raises(ConfigError, match="sources.quality.0.text_colum"):
        resolve_recipe("balanced", ["sources.quality.0.text_colum=TEXT"])


def test_set_applies_to_a_pool_given_with_source(tmp_path):
    pool = tmp_path / "laion.parquet"
    _, data = resolve_recipe("balanced", ["sources.quality.0.text_column=TEXT",
                                          "sources.quality.0.score_columns.aesthetic=AESTHETIC_SCORE"],
                             sources=[f"quality={pool}"])
    assert data["sources"]["quality"] == [{"uri": str(pool), "text_column": "TEXT",
                                           "score_columns": {"aesthetic": "AESTHETIC_SCORE"}}]


@pytest.mark.parametrize("override, message", [
    ("sources.quality.0.text_column=TEXT", "sources.quality.0.text_column does not apply to a generator source"),
    ("quotas.semantic.categories.bogus=0.1", "quotas.semantic.categories.bogus: unknown category"),
    ("steps.length.criteria=text", r"steps.length.criteria must be a list of criteria"),
    ("steps.length.criteria=[txt]", "steps.length.criteria: unknown criterion 'txt'"),
    ("sources.semantic=[]", "quotas.semantic asks for semantic prompts but sources.semantic is empty"),
    ("steps.length.min_words=abc", "steps.length.min_words must be an integer, got 'abc'"),
    ("steps.length.max_chars=1.5", "steps.length.max_chars must be an integer, got 1.5"),
    ("steps.dedup_exact.order_insensitive=maybe", "steps.dedup_exact.order_insensitive must be true or false"),
    ("steps.cluster.k=1.5", "steps.cluster.k must be an integer or a string, got 1.5"),
    ("steps.cluster.k=many", "steps.cluster: k must be a positive integer or 'auto', got 'many'"),  # the step's check
    ("steps.dedup_near.threshold=0.999", "threshold 0.999 is too high for num_perm 128"),
    ("steps.dedup_near.threshold=1", r"threshold must be in \(0, 1\), got 1"),
    ("quotas.text.fraction=null", "quotas.text.fraction must be a number >= 0, got None"),
])
def test_recipe_mistakes_fail_before_any_work_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_recipe("balanced", [override])


def test_a_recipe_file_with_a_repeated_key_or_that_is_missing_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("size: 10\nsteps: {length: {min_words: 2}, length: {min_words: 50}}\n")
    with pytest.raises(ConfigError, match="key 'length' appears twice"):
        resolve_recipe(str(path))
    with pytest.raises(ConfigError, match="nothere.yaml: no such recipe file"):
        resolve_recipe(str(tmp_path / "nothere.yaml"))
    merged = tmp_path / "anchors.yaml"  # merge keys repeat nothing: `<<` is flattened, not a key
    merged.write_text("base: &q {fraction: 1.0}\nsize: 10\nsources: {quality: [{generator: quality}]}\n"
                      "quotas: {quality: {<<: *q}}\n")
    from core.recipe import load_recipe

    assert load_recipe(str(merged), "curate")[1]["quotas"] == {"quality": {"fraction": 1.0}}


def test_every_step_lives_in_the_file_and_class_named_after_it():
    import pkgutil

    import filters
    from filters.base import STEPS, step_options

    step_options()  # imports every step module
    for kind, cls in STEPS.items():
        assert cls.__module__ == f"filters.{kind}", f"step {kind} lives in {cls.__module__}"
        assert cls.__name__ == kind.title().replace("_", ""), f"step {kind} is class {cls.__name__}"
    modules = {m.name for m in pkgutil.iter_modules(filters.__path__) if not m.ispkg} - {"base"}
    assert modules == set(STEPS), "a module beside the steps that is not one belongs in filters/lib/"
