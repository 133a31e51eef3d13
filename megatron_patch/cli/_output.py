"""`--json [OUT]` of the benchmark CLIs: alone, the JSON object replaces the table on stdout (one
line, the last); with OUT, the table is printed and the object written to OUT."""
import json

STDOUT = "-"


def add_json_flag(parser) -> None:
    parser.add_argument("--json", nargs="?", const=STDOUT, default=None, metavar="OUT",
                        help="print one JSON object instead of the table, or with OUT write it there")


def emit(result: dict, table: str, json_arg) -> None:
    if json_arg == STDOUT:
        print(json.dumps(result))
        return
    print(table)
    if json_arg:
        from megatron_patch.io import write_json

        write_json(json_arg, result)
