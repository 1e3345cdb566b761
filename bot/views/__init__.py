"""What csbot shows: account and alert cards, PNG charts, and the card + chart replies of the reports."""
