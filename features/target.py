"""The target: which hit actions count as a conversion."""

TARGET_ACTIONS: frozenset[str] = frozenset(
    {
        "sub_car_claim_click",
        "sub_car_claim_submit_click",
        "sub_open_dialog_click",
        "sub_custom_question_submit_click",
        "sub_call_number_click",
        "sub_callback_submit_click",
        "sub_submit_success",
        "sub_car_request_submit_click",
    }
)


def is_target_action(event_action: object) -> bool:
    """Tell whether a hit's event_action is a conversion."""
    return event_action in TARGET_ACTIONS
