//! Search leaves out words too common to tell chunks apart (`retrieval.common_word_share`), from
//! PostgreSQL's statistics of the search vectors, and keeps the question's rarest words however
//! common. Against a real PostgreSQL, with the knowledge store the API and the worker use.

use chatfleet::archive::Archive;
use chatfleet::local_postgres::LocalPostgres;
use chatfleet::retrieval::store::Knowledge;
use chatfleet::retrieval::RetrievalSettings;

/// Filler chunks all hold "plan", "account" and "support"; one document is about refunds.
async fn collection(pg: &LocalPostgres) -> (Archive, Knowledge) {
    let mut s = chatfleet::settings::Settings::defaults();
    s.archive.url = pg.url();
    let archive = Archive::new(&s.archive).unwrap();
    archive.migrate().await.expect("the schema applies");
    let k = Knowledge::new(archive.pool().clone());
    for d in 0..200 {
        let text = format!("Your plan and account come with support, item {d} of the catalogue number {}.", d * 7);
        k.put("acme", "faq", &format!("filler-{d}"), "FAQ", text.len(), &[text], 0, u64::MAX).await.unwrap();
    }
    let refunds = "An annual plan can be refunded within 30 days: write to billing with the receipt.";
    k.put("acme", "faq", "refunds", "Refunds", refunds.len(), &[refunds.to_string()], 0, u64::MAX).await.unwrap();
    (archive, k)
}

fn ids(hits: &[chatfleet::retrieval::pack::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.document.as_str()).collect()
}

#[tokio::test]
async fn words_in_most_chunks_are_left_out_once_analyzed_and_the_rarest_are_kept() {
    let pg = LocalPostgres::start().await.expect("postgres starts");
    let (archive, k) = collection(&pg).await;
    let s = RetrievalSettings::default();
    let question = "Can I get my annual plan refunded by support for my account?";
    // Before ANALYZE there are no statistics: every word is used, and the chunks holding two of
    // the common ones fill the results.
    let before = k.search("acme", "faq", question, &s).await.unwrap();
    assert_eq!(before.len(), s.top_k as usize);
    assert_eq!(before[0].document, "refunds");

    sqlx::query("ANALYZE knowledge_chunks").execute(archive.pool()).await.unwrap();
    // Now "plan", "account" and "support" (in every chunk) are too common; the three rarest
    // words stay (annual, refund, then the first common one by name), and only a chunk holding
    // two of them is a candidate.
    let after = k.search("acme", "faq", question, &s).await.unwrap();
    assert_eq!(ids(&after), ["refunds"]);
    // Keeping every word (share 1.0) brings the common ones back.
    let all = RetrievalSettings { common_word_share: 1.0, ..Default::default() };
    assert_eq!(k.search("acme", "faq", question, &all).await.unwrap().len(), s.top_k as usize);
    // A question of common words only still searches by its rarest three.
    let common = k.search("acme", "faq", "my plan, my account, my support", &s).await.unwrap();
    assert_eq!(common.len(), s.top_k as usize);
    archive.close().await;
}
